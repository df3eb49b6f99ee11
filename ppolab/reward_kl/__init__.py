"""Per-token KL to the reference model, KL-penalised rewards and KL-coefficient controllers."""
from .controllers import AdaptiveKLController, FixedKLController
from .kl import kl_penalized_rewards, per_token_kl

__all__ = ["per_token_kl", "kl_penalized_rewards", "FixedKLController", "AdaptiveKLController"]
