"""The reward model retrained on the feedback stage's pairs (continuing from the cold-start one)."""
from __future__ import annotations

import json
import random

from ...data import build_prompt
from ...synthetic import load_preferences
from ..config import PipelineConfig
from ..data import directions
from ..models import as_response, load_reward
from ..pairs import bucket, rm_pair
from ..run import Run
from .reward_model import train_and_save


def run(run: Run, cfg: PipelineConfig) -> dict:
    h = cfg.reward_model_human
    pairs_of = directions(cfg)
    human = [json.loads(line) for line in open(run / "human_preferences.jsonl", encoding="utf-8") if line.strip()]
    if not human:
        raise RuntimeError(f"{run / 'human_preferences.jsonl'}: no human pairs to train on")
    model = load_reward(run / "reward_model_coldstart", cfg.model)
    tok = model.tokenizer

    def to_pair(p):
        src, tgt = pairs_of[p["direction"]]
        return {"prompt": build_prompt(p["source"], src, tgt, tok),
                "chosen": as_response(p["chosen"]), "rejected": as_response(p["rejected"])}

    val = [to_pair(p) for p in human if bucket(str(p["item_id"]), h.val_fraction)]
    train = [to_pair(p) for p in human if not bucket(str(p["item_id"]), h.val_fraction)]
    # A little synthetic data in the mix keeps the model from forgetting what it learned there.
    synth = [rm_pair(p) for p in load_preferences(run / "synthetic_preferences.jsonl")
             if not bucket(p["source"], cfg.reward_model.val_fraction)]
    random.Random(cfg.seed).shuffle(synth)
    train += synth[: h.mix_synthetic]
    result = train_and_save(run, cfg, "reward_model_human", model, train, val, h, run / "reward_model_human")
    result["pairs"] = len(human)
    run.log("reward_model_human", {"event": "done", **{k: v for k, v in result.items() if k != "history"}})
    return result
