"""Odds Ratio Preference Optimization trainer (Hong et al. 2024).

ORPO needs no reference model: the per-example loss is

    nll + or_loss,   nll = -mean_t log pi(y_c,t | x, y_c,<t)        (chosen only)
                     or_loss = -beta * log sigmoid(log odds(c) - log odds(r))

where both terms use *length-averaged* response log-probabilities. The SFT term pulls the
chosen response up; the odds-ratio term pushes the rejected one down relative to it.

Training-loop conventions (train mode with every dropout probability set to 0, seeded private
shuffling, one ``2B`` forward, metrics from the pre-update forward, atomic save) are the same as
in :mod:`ppolab.preference.dpo`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ppolab.preference.dpo import (
    _batches,
    _check_common,
    _backward_and_step,
    _record,
    _model_device,
    _pair_logps,
    _save_atomic,
    _train_mode_without_dropout,
    _trainable_params,
)
from ppolab.preference.logprobs import check_pairs
from ppolab.preference.losses import log_odds, orpo_odds_ratio_loss

__all__ = ["ORPOConfig", "train_orpo"]


@dataclass
class ORPOConfig:
    """Hyper-parameters of :func:`train_orpo`.

    ``beta``: weight of the odds-ratio term (the paper's lambda, 0.1). ``lr``: AdamW learning
    rate (8e-6 as in the paper for full fine-tuning). ``weight_decay`` and ``grad_clip``
    (``None`` disables) mirror :class:`~ppolab.preference.dpo.DPOConfig`.
    """

    beta: float = 0.1
    lr: float = 8e-6
    epochs: int = 1
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        _check_common(self)


def train_orpo(
    policy: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Mapping],
    config: ORPOConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``policy`` in place with ORPO on preference ``pairs``.

    Args:
        policy: causal LM (HF or peft); trainable parameters are optimised with AdamW.
        tokenizer: HF tokenizer (needs ``eos_token_id``).
        pairs: dicts with str ``prompt``, ``chosen``, ``rejected`` (extra keys ignored).
        config: :class:`ORPOConfig`.
        out_dir: if given, ``save_pretrained`` policy + tokenizer there at the end (atomically).
        progress: show a tqdm bar.

    Returns:
        One dict per optimizer step: ``step, epoch, loss, nll, or_loss, log_odds,
        log_odds_accuracy, chosen_avg_logps, rejected_avg_logps, grad_norm`` (batch means;
        ``log_odds`` is log odds(chosen) - log odds(rejected), ``log_odds_accuracy`` the fraction
        of pairs where it is > 0).
    """
    if not isinstance(config, ORPOConfig):
        raise TypeError(f"config must be an ORPOConfig, got {type(config).__name__}")
    pairs = check_pairs(pairs)
    device = _model_device(policy)
    params = _trainable_params(policy)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(pairs)
    total_steps = config.epochs * math.ceil(n / config.batch_size)
    history: list[dict] = []
    step = 0
    with _train_mode_without_dropout(policy), torch.enable_grad(), tqdm(
        total=total_steps, disable=not progress, desc="orpo", dynamic_ncols=True
    ) as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for _, prompts, ch, rj in _batches(pairs, order, config.batch_size):
                c_avg, r_avg = _pair_logps(policy, tokenizer, prompts, ch, rj, config.max_length, device, True)
                nll = -c_avg  # [b]
                or_losses = orpo_odds_ratio_loss(c_avg, r_avg, beta=config.beta)  # [b]
                loss = (nll + or_losses).mean()
                grad_norm = _backward_and_step(loss, params, optimizer, config.grad_clip, step)
                with torch.no_grad():
                    ratio = log_odds(c_avg) - log_odds(r_avg)
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(loss.detach()),
                    "nll": float(nll.detach().mean()),
                    "or_loss": float(or_losses.detach().mean()),
                    "log_odds": float(ratio.mean()),
                    "log_odds_accuracy": float((ratio > 0).float().mean()),
                    "chosen_avg_logps": float(c_avg.detach().mean()),
                    "rejected_avg_logps": float(r_avg.detach().mean()),
                    "grad_norm": grad_norm,
                }
                _record(history, bar, metrics, "log_odds")
                step += 1

    if out_dir is not None:
        _save_atomic(
            policy, tokenizer, out_dir,
            {"trainer": "orpo", "config": dataclasses.asdict(config), "history": history},
        )
    return history
