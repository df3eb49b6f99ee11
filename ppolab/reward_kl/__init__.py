"""Per-token KL to the reference model, KL-penalised rewards, the KL loss term and KL-coefficient controllers."""
from .controllers import AdaptiveKLController, FixedKLController
from .kl import kl_loss, kl_penalized_rewards, per_token_kl

__all__ = ["per_token_kl", "kl_penalized_rewards", "kl_loss", "FixedKLController", "AdaptiveKLController"]
