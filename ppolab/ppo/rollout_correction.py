"""The sampler-trainer mismatch, measured and corrected.

The sampler (a merged, quantised or bf16 copy, another decoding engine) draws the tokens from
pi_sampler; PPO's ratio is taken against the trainer's own recomputed log-probs pi_old. Where the
two arithmetics differ the rollout is slightly off-policy, and the policy gradient is biased by
that much (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training"). With rho = pi_old / pi_sampler (per token, or the product over a sequence):

    none   w = 1
    tis    w = min(rho, C)                 truncated importance sampling (verl, OpenRLHF)
    mis    w = rho if rho <= C else 0      masked importance sampling: over-cap tokens (or whole
                                           sequences) drop out of the policy loss

The weight multiplies each token's policy loss before aggregation (so a masked token still counts
in a token-mean's denominator, as in verl). It is a constant of the surrogate: no gradient flows
through it. When sampler and trainer agree exactly, rho = 1 and every mode equals no correction
(C >= 1).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_floating, check_mask, check_same_shape

MODES = ("none", "tis", "mis")
LEVELS = ("token", "sequence")


def _log_ratio(logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor):
    check_floating(logprobs=logprobs, sampler_logprobs=sampler_logprobs)
    check_same_shape(logprobs=logprobs, sampler_logprobs=sampler_logprobs, mask=mask)
    mask = check_mask(mask)
    # Zero padding first so junk there (inf, nan) reaches neither the sums nor the weights; at least fp32.
    dtype = torch.promote_types(torch.promote_types(logprobs.dtype, sampler_logprobs.dtype), torch.float32)
    d = torch.where(mask, logprobs.detach().to(dtype) - sampler_logprobs.detach().to(dtype), 0.0)
    return d, mask


def rollout_correction_weights(
    logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "tis",
    cap: float = 2.0,
    level: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights `[B, T]` of the policy loss that correct for sampling from another arithmetic.

    Args:
        logprobs: `[B, T]` the trainer's log-probs of the sampled tokens (pi_old, PPO's ratio base).
        sampler_logprobs: `[B, T]` the sampler's log-probs of the same tokens.
        mask: `[B, T]` valid tokens.
        mode: "none" | "tis" | "mis" (module docstring).  cap: C > 0.
        level: "token" (rho per token) or "sequence" (rho = exp of the row's masked sum of log-ratios,
            one weight for all of a row's tokens).
    Returns:
        weights `[B, T]` (fp32, or fp64 for fp64 inputs), detached, 0 on padding; stats (detached scalars, token means):
        `rollout_correction/weight_mean`, `rollout_correction/capped_fraction` (tokens whose rho
        exceeded C: truncated by tis, masked by mis).
    """
    if mode not in MODES:
        raise ValueError(f"rollout_correction: mode must be one of {MODES}, got {mode!r}")
    if level not in LEVELS:
        raise ValueError(f"rollout_correction: level must be one of {LEVELS}, got {level!r}")
    if not (isinstance(cap, (int, float)) and math.isfinite(cap) and cap > 0):
        raise ValueError(f"rollout_correction: cap must be a finite number > 0, got {cap!r}")
    d, mask = _log_ratio(logprobs, sampler_logprobs, mask)
    if level == "sequence":
        d = torch.where(mask, d.sum(-1, keepdim=True), 0.0)  # every token carries its row's log rho
    log_cap = math.log(cap)
    over = (d > log_cap) & mask
    if mode == "none":
        w = torch.ones_like(d)
    elif mode == "tis":
        w = torch.exp(torch.clamp(d, max=log_cap))  # min(rho, C) without overflowing exp
    else:
        w = torch.where(over, 0.0, torch.exp(torch.clamp(d, max=log_cap)))
    w = torch.where(mask, w, 0.0)
    n = mask.sum()
    stats = {
        "rollout_correction/weight_mean": w.sum() / n,
        "rollout_correction/capped_fraction": over.float().sum() / n,
    }
    return w, stats


def mismatch_stats(logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the sampler's log-probs `[B, T]` are from the trainer's, over the valid tokens.

    `mismatch/logprob_abs_mean`, `mismatch/logprob_abs_max`: |trainer - sampler| per token;
    `mismatch/k3_kl`: the k3 estimate of KL(sampler || trainer) from the sampler's own tokens,
    mean of (r - 1) - log r with r = pi_trainer / pi_sampler (>= 0 per token, 0 iff equal);
    `mismatch/ratio_outside_0.5_2`: the share of tokens whose r leaves [0.5, 2].
    """
    d, mask = _log_ratio(logprobs, sampler_logprobs, mask)
    n = mask.sum()
    # (r - 1) - log r computed as expm1(d) - d: no cancellation for the tiny d of fp32 rounding.
    k3 = torch.where(mask, torch.expm1(d) - d, 0.0)
    outside = mask & (d.abs() > math.log(2.0))
    return {
        "mismatch/logprob_abs_mean": float(d.abs().sum() / n),
        "mismatch/logprob_abs_max": float(d.abs().max()),
        "mismatch/k3_kl": float(k3.sum() / n),
        "mismatch/ratio_outside_0.5_2": float(outside.float().sum() / n),
    }
