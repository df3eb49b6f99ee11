"""Reward-model training: Bradley–Terry on preference pairs, layer-wise unfreezing, normalisation.

See :mod:`ppolab.reward.trainer` for the design decisions (text convention shared with
``RewardModel.score``, raw scores in the loss, unfreezing schedule).
"""
from ppolab.reward.trainer import (
    UNFREEZE_SCHEDULES,
    RewardTrainConfig,
    apply_unfreeze_schedule,
    build_reward_model,
    check_reward_pairs,
    continue_training,
    decoder_layers,
    evaluate_reward_model,
    normalize_reward_model,
    tokenize_pairs_for_rm,
    train_reward_model,
    unfrozen_layer_count,
)

__all__ = [
    "RewardTrainConfig",
    "UNFREEZE_SCHEDULES",
    "apply_unfreeze_schedule",
    "build_reward_model",
    "check_reward_pairs",
    "continue_training",
    "decoder_layers",
    "evaluate_reward_model",
    "normalize_reward_model",
    "tokenize_pairs_for_rm",
    "train_reward_model",
    "unfrozen_layer_count",
]
