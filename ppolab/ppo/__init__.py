"""PPO: clipped policy/value losses, loss aggregation modes and entropy."""
from ..advantage.aggregate import AGGREGATIONS, aggregate_loss
from .losses import clipped_policy_loss, clipped_value_loss, entropy_from_logits, policy_ratio

from .trainer import PPOTrainer

__all__ = ["PPOTrainer", "policy_ratio", "clipped_policy_loss", "clipped_value_loss", "entropy_from_logits",
           "aggregate_loss", "AGGREGATIONS"]
