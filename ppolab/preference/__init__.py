"""Preference optimisation: Bradley–Terry, DPO/IPO and ORPO losses, plus DPO and ORPO trainers.

Losses are per-example (``[B]`` in, ``[B]`` out) and validated; see :mod:`.losses`.
Log-probabilities of responses under a causal LM come from :func:`sequence_logprobs` on
left-padded batches built by :func:`tokenize_pairs` (chosen rows then rejected rows, ``2B``).
"""
from ppolab.preference.dpo import DPOConfig, reference_logps, train_dpo
from ppolab.preference.logprobs import check_pairs, sequence_logprobs, tokenize_pairs
from ppolab.preference.losses import (
    ORPO_MAX_LOGP,
    bradley_terry_loss,
    dpo_loss,
    log1mexp,
    log_odds,
    orpo_odds_ratio_loss,
)
from ppolab.preference.orpo import ORPOConfig, train_orpo

__all__ = [
    "DPOConfig",
    "ORPOConfig",
    "ORPO_MAX_LOGP",
    "bradley_terry_loss",
    "check_pairs",
    "dpo_loss",
    "log1mexp",
    "log_odds",
    "orpo_odds_ratio_loss",
    "reference_logps",
    "sequence_logprobs",
    "tokenize_pairs",
    "train_dpo",
    "train_orpo",
]
