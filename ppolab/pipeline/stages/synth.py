"""Synthetic preference pairs: SFT samples ranked by reference-based metrics."""
from __future__ import annotations

import random

from ...metrics import CombinedMetric
from ...synthetic import SynthConfig, generate_synthetic_preferences
from ..config import PipelineConfig, section_part
from ..data import load_split
from ..models import load_policy, sft_dir
from ..run import Run


def run(run: Run, cfg: PipelineConfig) -> dict:
    model, tok = load_policy(sft_dir(run), cfg)
    model.eval()
    examples = load_split(cfg, "train")
    random.Random(cfg.seed).shuffle(examples)
    n = cfg.synth.n_sources
    examples = examples[:n] if n else examples
    stats = generate_synthetic_preferences(model, tok, examples, CombinedMetric(), section_part(cfg.synth, SynthConfig),
                                           out_dir=run.path)
    result = {"pairs": int(stats["pairs"]), "sources": stats.get("sources"), "seconds": stats.get("seconds")}
    run.log("synth", result)
    return result
