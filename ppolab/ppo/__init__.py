"""PPO: clipped policy/value losses, loss aggregation modes and entropy."""
from ..advantage.aggregate import AGGREGATIONS, aggregate_loss
from .losses import clipped_policy_loss, clipped_value_loss, entropy_from_logits, policy_ratio

from .experience import Experience
from .protocols import Recorder, ValueHead
from .trainer import PPOTrainer, minibatch_loss

__all__ = ["PPOTrainer", "Experience", "minibatch_loss", "Recorder", "ValueHead",
           "policy_ratio", "clipped_policy_loss", "clipped_value_loss", "entropy_from_logits",
           "aggregate_loss", "AGGREGATIONS"]
