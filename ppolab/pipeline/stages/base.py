"""The base model before any training: the table's first row (pretrained models only)."""
from __future__ import annotations

import time

from ..config import PipelineConfig
from ..evaluate import evaluate, flores_block
from ..models import load_policy, set_prompt_format
from ..run import Run


def run(run: Run, cfg: PipelineConfig) -> dict:
    """Scores of the pretrained model as it comes, in the preset's prompt format."""
    if not cfg.model.policy_path:
        return {"skipped": "tiny models start random: no base row"}
    model, tok = load_policy(cfg.model.policy_path, cfg)
    set_prompt_format(tok, cfg)
    t0 = time.time()
    ev = evaluate(model, tok, cfg)
    result = {"eval": flores_block(model, tok, cfg, ev), "chrf_test": ev["chrf"], "bleu_test": ev["bleu"],
              "seconds": time.time() - t0}
    run.log("base", result)
    return result
