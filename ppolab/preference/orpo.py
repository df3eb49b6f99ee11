"""Odds Ratio Preference Optimization trainer (Hong et al. 2024).

ORPO needs no reference model: the per-example loss is

    nll + or_loss,   nll = -mean_t log pi(y_c,t | x, y_c,<t)        (chosen only)
                     or_loss = -beta * log sigmoid(log odds(c) - log odds(r))

where both terms use *length-averaged* response log-probabilities. The SFT term pulls the
chosen response up; the odds-ratio term pushes the rejected one down relative to it.

Training-loop conventions (train mode with every dropout probability set to 0, seeded private
shuffling, one ``2B`` forward, metrics from the pre-update forward, validation split, best and
final checkpoints) are DPO's: both run :func:`ppolab.preference.loop.train_policy_on_pairs`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .loop import PairLoopConfig, checked_splits, model_device, pair_logps, train_policy_on_pairs
from .losses import log_odds, orpo_odds_ratio_loss

__all__ = ["ORPOConfig", "train_orpo"]


@dataclass
class ORPOConfig(PairLoopConfig):
    """Hyper-parameters of :func:`train_orpo` (the loop's, :class:`~ppolab.preference.loop.PairLoopConfig`, and):

    ``beta``: weight of the odds-ratio term (the paper's lambda, 0.1). ``lr``: 8e-6 as in the paper
    for full fine-tuning.
    """

    beta: float = 0.1
    lr: float = 8e-6

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        super().__post_init__()


def train_orpo(
    policy: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Mapping],
    config: ORPOConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    valid_pairs: Sequence[Mapping] | None = None,
) -> list[dict]:
    """Train ``policy`` in place with ORPO on preference ``pairs``.

    Args:
        policy: causal LM (HF or peft); trainable parameters are optimised with AdamW.
        tokenizer: HF tokenizer (needs ``eos_token_id``).
        pairs: dicts with str ``prompt``, ``chosen``, ``rejected`` (extra keys ignored).
        config: :class:`ORPOConfig`.
        out_dir: if given, the policy + tokenizer are saved there at the end (atomically; a LoRA
            policy merged, its adapter in ``adapter/``), the best-validation epoch in ``best/``.
        progress: show a tqdm bar.
        valid_pairs: validation pairs; None: ``config.valid_fraction`` of ``pairs``' prompts.

    Returns:
        One dict per optimizer step: ``step, epoch, loss, nll, or_loss, log_odds,
        log_odds_accuracy, chosen_avg_logps, rejected_avg_logps, grad_norm`` (batch means;
        ``log_odds`` is log odds(chosen) - log odds(rejected), ``log_odds_accuracy`` the fraction
        of pairs where it is > 0). With validation pairs each epoch's last step also has
        ``valid_loss`` and ``valid_accuracy`` (the log-odds accuracy on the validation pairs).
    """
    if not isinstance(config, ORPOConfig):
        raise TypeError(f"config must be an ORPOConfig, got {type(config).__name__}")
    pairs, valid_pairs = checked_splits(pairs, valid_pairs, config)
    device = model_device(policy)

    def losses_of(batch):
        c_avg, r_avg = pair_logps(policy, tokenizer, batch, config.max_length, device, True)
        nll = -c_avg  # [b]
        or_losses = orpo_odds_ratio_loss(c_avg, r_avg, beta=config.beta)  # [b]
        return nll, or_losses, c_avg, r_avg

    def step_loss(idx, batch):
        nll, or_losses, c_avg, r_avg = losses_of(batch)
        with torch.no_grad():
            ratio = log_odds(c_avg) - log_odds(r_avg)
        return (nll + or_losses).mean(), {
            "nll": float(nll.detach().mean()),
            "or_loss": float(or_losses.detach().mean()),
            "log_odds": float(ratio.mean()),
            "log_odds_accuracy": float((ratio > 0).float().mean()),
            "chosen_avg_logps": float(c_avg.detach().mean()),
            "rejected_avg_logps": float(r_avg.detach().mean()),
        }

    def valid_loss(idx, batch):
        nll, or_losses, c_avg, r_avg = losses_of(batch)
        return nll + or_losses, log_odds(c_avg) - log_odds(r_avg) > 0

    return train_policy_on_pairs(
        policy, tokenizer, pairs, valid_pairs, config, step_loss, valid_loss,
        name="orpo", shown="log_odds", out_dir=out_dir, progress=progress,
    )
