"""Supervised fine-tuning of the translation policy (PPO's starting point and reference).

`train_sft` fits a causal LM on prompt -> " " + target + EOS with the loss on target tokens
only; `translate` / `evaluate_translation` decode with the same layout and score with chrF.
"""
from .trainer import (
    SFTConfig,
    collate_sft,
    encode_sft_example,
    load_sft,
    save_sft,
    sft_loss,
    tokenize_sft,
    train_sft,
    warmup_linear_decay,
)
from .translate import TARGET_SEPARATOR, encode_prompt, evaluate_translation, format_target, translate

__all__ = [
    "SFTConfig", "TARGET_SEPARATOR", "collate_sft", "encode_prompt", "encode_sft_example", "evaluate_translation",
    "format_target", "load_sft", "save_sft", "sft_loss", "tokenize_sft", "train_sft", "translate",
    "warmup_linear_decay",
]
