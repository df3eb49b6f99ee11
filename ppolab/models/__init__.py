"""Policy (optionally LoRA), frozen reference, value and reward models; tiny offline builders."""
from .builders import (
    Reference,
    base_trunk,
    build_policy,
    build_tiny_causal_lm,
    disable_dropout,
    freeze,
    is_peft,
    is_quantized,
    load_causal_lm,
    load_tokenizer,
    position_ids_from_mask,
    quantization_config,
    tiny_lm_config,
    wrap_lora,
)
from .scalar import RewardModel, ScalarHead, ScalarModel, ValueModel, load_reward_model
from .pretrained import pretrained_path, resolve_model_path
from .shared import build_value_model, value_head_on_policy
from .tokenizer import build_tokenizer

__all__ = [
    "Reference", "RewardModel", "ScalarHead", "ScalarModel", "ValueModel", "base_trunk", "build_policy",
    "build_tiny_causal_lm", "build_tokenizer", "build_value_model", "pretrained_path", "resolve_model_path", "disable_dropout", "freeze", "is_peft", "is_quantized", "load_causal_lm",
    "load_reward_model", "load_tokenizer", "quantization_config", "position_ids_from_mask", "tiny_lm_config", "value_head_on_policy", "wrap_lora",
]
