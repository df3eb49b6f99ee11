"""Advantage estimation (TD errors, GAE, rewards-to-go, group baselines) and masked batch statistics."""
from .gae import gae, rewards_to_go, td_errors
from .group import expand_to_tokens, group_advantages, rloo_advantages
from .whiten import masked_mean, masked_var, masked_whiten

__all__ = ["td_errors", "gae", "rewards_to_go", "group_advantages", "rloo_advantages", "expand_to_tokens",
           "masked_mean", "masked_var", "masked_whiten"]
