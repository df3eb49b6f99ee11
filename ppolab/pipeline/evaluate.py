"""Greedy evaluation every model stage reports: the test split, and FLORES-200 when present."""
from __future__ import annotations

import os
from pathlib import Path

from ..data import load_parallel
from ..metrics import bleu, chrf, chrf_pp
from ..sft.translate import evaluate_translation
from .config import PipelineConfig
from .data import directions, load_split


def eval_examples(cfg: PipelineConfig):
    test = load_split(cfg, "test")
    limit = cfg.eval.test_limit
    return test[:limit] if limit else test


def evaluate(model, tok, cfg: PipelineConfig, examples=None, label: str = "test") -> dict:
    """Greedy translation of `examples` (default: the test split) with scores and hypotheses."""
    model.eval()
    return evaluate_translation(model, tok, eval_examples(cfg) if examples is None else examples,
                                max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                                return_hypotheses=True, progress=f"evaluate {label}")


def flores_file() -> Path | None:
    """FLORES-200 devtest (EN/FR/AR), read where this workplace keeps it: `$PPOLAB_FLORES`, else
    `shared/data/flores200/` beside the repository or beside any folder above it (a worktree or a
    clone nested deeper). Never shipped with ppolab; None when absent."""
    env = os.environ.get("PPOLAB_FLORES")
    rel = Path("shared") / "data" / "flores200" / "devtest.eng-fra-arb.tsv"
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(env)] if env else []
    candidates += [folder / rel for folder in (*repo.parents, *Path.cwd().resolve().parents)]
    return next((c for c in candidates if c.is_file()), None)


def scores(cfg: PipelineConfig, examples, hypotheses) -> dict:
    """chrF, chrF++ and BLEU per direction of already translated `examples`."""
    out = {}
    for direction in directions(cfg):
        idx = [i for i, ex in enumerate(examples) if ex.direction == direction]
        if idx:
            hyps, refs = [hypotheses[i] for i in idx], [examples[i].target for i in idx]
            out[direction] = {"chrf": chrf(hyps, refs), "chrf_pp": chrf_pp(hyps, refs), "bleu": bleu(hyps, refs),
                              "n": len(idx)}
    return out


def flores_block(model, tok, cfg, test_eval: dict) -> dict | None:
    """Per-direction scores on the test split (from `test_eval`, `evaluate`'s result, so it is not
    translated twice) and on the first `eval.flores_limit` FLORES devtest sentences of each
    direction; None when the preset sets no limit."""
    limit = cfg.eval.flores_limit
    if not limit:
        return None
    block = {"test": scores(cfg, eval_examples(cfg), test_eval["hypotheses"])}
    path = flores_file()
    if path is None:
        block["flores"] = None  # the report says it was not available
    else:
        rows = list(load_parallel(path))
        first = [ex for d in directions(cfg) for ex in [r for r in rows if r.direction == d][:limit]]
        block["flores"] = scores(cfg, first, evaluate(model, tok, cfg, first, "FLORES")["hypotheses"])
        block["flores_file"] = str(path)
    return block
