"""Advantage estimation (TD errors, GAE, rewards-to-go) and masked batch statistics."""
from .gae import gae, rewards_to_go, td_errors
from .whiten import masked_mean, masked_var, masked_whiten

__all__ = ["td_errors", "gae", "rewards_to_go", "masked_mean", "masked_var", "masked_whiten"]
