"""The cold-start reward model, trained on the synthetic pairs.

`train_and_save` is the training both reward-model stages share.
"""
from __future__ import annotations

import time
from pathlib import Path

from ...models import RewardModel
from ...reward import RewardTrainConfig, build_reward_model, evaluate_reward_model, normalize_reward_model, train_reward_model
from ...synthetic import load_preferences
from ..config import PipelineConfig, section_part
from ..models import load_policy, policy_samples, sft_dir
from ..pairs import bucket, reference_pairs, rm_pair
from ..run import Run


def train_and_save(run: Run, cfg: PipelineConfig, stage: str, model: RewardModel, train_pairs, val_pairs,
                   section, out: Path) -> dict:
    """Train `model` with the section's RewardTrainConfig, normalise it on SFT samples, save it to `out`."""
    t0 = time.time()
    history = train_reward_model(model, train_pairs, val_pairs, section_part(section, RewardTrainConfig),
                                 log=run.logger(stage))
    sft, tok = load_policy(sft_dir(run), cfg)
    prompts, responses = policy_samples(sft, tok, cfg, section.normalize_samples)
    mean, std = normalize_reward_model(model, prompts, responses)
    model.save(out)
    return {"val_accuracy": history[-1]["val_accuracy"], "train_accuracy": history[-1].get("train_accuracy"),
            "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "norm_mean": mean, "norm_std": std,
            "history": history, "seconds": time.time() - t0}


def run(run: Run, cfg: PipelineConfig) -> dict:
    pairs = load_preferences(run / "synthetic_preferences.jsonl")
    if not pairs:
        raise RuntimeError(f"{run / 'synthetic_preferences.jsonl'}: no pairs; lower synth.min_gap or add sources")
    frac = cfg.reward_model.val_fraction
    # Split by source sentence so validation pairs come from sources the model never trained on.
    val = [rm_pair(p) for p in pairs if bucket(p["source"], frac)]
    train = [rm_pair(p) for p in pairs if not bucket(p["source"], frac)]
    val_reference = reference_pairs([p for p in pairs if bucket(p["source"], frac)])
    if cfg.reward_model.reference_pairs:
        train += reference_pairs([p for p in pairs if not bucket(p["source"], frac)])
    sft, tok = load_policy(sft_dir(run), cfg)
    model = build_reward_model(sft, tok, section_part(cfg.reward_model, RewardTrainConfig))
    del sft
    result = train_and_save(run, cfg, "reward_model", model, train, val, cfg.reward_model,
                            run / "reward_model_coldstart")
    # Does the model rank a human reference above the samples? Synthetic pairs alone never show
    # it one, and without them it learned surface cues (length) that references do not share.
    result["val_reference_accuracy"] = evaluate_reward_model(model, val_reference)["accuracy"]
    run.log("reward_model", {"event": "done", **{k: v for k, v in result.items() if k != "history"}})
    return result
