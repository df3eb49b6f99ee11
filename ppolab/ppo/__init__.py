"""PPO: clipped policy/value losses and entropy."""
from .losses import clipped_policy_loss, clipped_value_loss, entropy_from_logits, policy_ratio

from .trainer import PPOTrainer

__all__ = ["PPOTrainer", "policy_ratio", "clipped_policy_loss", "clipped_value_loss", "entropy_from_logits"]
