"""Per-token KL to the reference policy and the KL-penalised reward.

RLHF maximises ``score(response) - beta * KL(policy || reference)``. The KL
is estimated per token from log-probabilities of the *sampled* tokens,
with one of Schulman's estimators (http://joschu.net/blog/kl-approx.html);
writing ``r = ref_logprob - logprob`` (the log-ratio ref/policy):

    k1 = -r                   unbiased, can be negative per token
    k2 = 0.5 * r**2           biased, >= 0, low variance
    k3 = exp(r) - 1 - r       unbiased, >= 0, low variance
"""
import torch

from .._checks import (
    check_finite,
    check_floating,
    check_mask,
    check_nonnegative,
    check_same_shape,
    check_shape,
)
from ..advantage.aggregate import aggregate_loss

ESTIMATORS = ("k1", "k2", "k3")


def per_token_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens.

    Args:
        logprobs: ``[B, T]`` policy log-probs of the sampled tokens.
        ref_logprobs: ``[B, T]`` reference-model log-probs of the same tokens.
        mask: ``[B, T]``.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see module docstring).
    Returns:
        ``[B, T]``; 0 on padding.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    check_floating(logprobs=logprobs, ref_logprobs=ref_logprobs)
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    mask = check_mask(mask)
    check_finite(logprobs, mask, "logprobs")
    check_finite(ref_logprobs, mask, "ref_logprobs")
    # Zero the log-ratio on padding first: every estimator maps 0 to 0.
    log_ratio = torch.where(mask, ref_logprobs - logprobs, 0.0)  # log(ref / policy)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    # expm1 avoids the cancellation of exp(r) - 1 for small r; the clamp only
    # absorbs rounding, the exact value is >= 0.
    return (torch.expm1(log_ratio) - log_ratio).clamp_min(0.0)


def kl_penalized_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    missing_eos_penalty: float | None = None,
    has_eos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense per-token rewards: ``-kl_coef * kl`` everywhere, plus the score at the end.

    The sequence-level score is a reward for the whole response, so it is
    paid at the last valid token (the action that completed it).

    Missing-EOS penalty (Huang et al. 2024, "The N+ Implementation Details of
    RLHF with PPO", detail on EOS handling): responses truncated before an EOS
    are penalised so the policy learns to finish within the length budget.
    Huang et al. replace their score by a constant; like TRL we subtract
    ``missing_eos_penalty`` (>= 0) from the score of rows with
    ``has_eos == False``. ``has_eos`` is only read when a penalty is given.

    Args:
        scores: ``[B]`` reward-model scores; must be finite.
        kl: ``[B, T]`` per-token KL (e.g. from ``per_token_kl``).
        mask: ``[B, T]``.
        kl_coef: beta >= 0.
        missing_eos_penalty: None or a number >= 0.
        has_eos: ``[B]`` bool, required with ``missing_eos_penalty``.
    Returns:
        ``[B, T]`` in ``kl.dtype``; 0 on padding.
    """
    check_floating(scores=scores, kl=kl)
    check_same_shape(kl=kl, mask=mask)
    mask = check_mask(mask)
    check_shape(scores, mask.shape[:1], "scores")
    bad = ~torch.isfinite(scores)
    if bad.any():
        raise ValueError(f"scores has a non-finite value at row {int(bad.nonzero()[0, 0])}")
    check_finite(kl, mask, "kl")
    kl_coef = check_nonnegative(kl_coef, "kl_coef")
    scores = scores.to(kl.dtype)
    if missing_eos_penalty is not None:
        penalty = check_nonnegative(missing_eos_penalty, "missing_eos_penalty")
        if has_eos is None:
            raise ValueError("has_eos ([B] bool) is required when missing_eos_penalty is given")
        check_shape(has_eos, mask.shape[:1], "has_eos")
        if has_eos.dtype != torch.bool:
            raise ValueError(f"has_eos must be a bool tensor, got dtype {has_eos.dtype}")
        scores = torch.where(has_eos, scores, scores - penalty)
    rewards = torch.where(mask, -kl_coef * kl, 0.0)
    last = mask.sum(dim=1, keepdim=True) - 1  # [B, 1] index of the last valid token
    return rewards + torch.zeros_like(rewards).scatter(1, last, scores[:, None])


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k3",
    aggregation: str = "token-mean",
    norm_length: int | None = None,
) -> torch.Tensor:
    """KL to the reference as a loss term (GRPO style) instead of a reward penalty, ``[]``.

    ``aggregate_loss(per_token_kl(logprobs, ref_logprobs, mask, estimator), mask, aggregation)``;
    the caller adds ``kl_loss_coef * kl_loss(...)`` to the policy loss. The *values* of k1 and k3
    are both unbiased for KL(policy || ref), but differentiating them through ``logprobs`` on
    tokens sampled from the policy gives different things (``r = ref_logprob - logprob``):

        k1: d/dlogprob = 1           E[grad] = E[grad log pi] = 0: no pull towards ref at all,
                                     only noise
        k2: d/dlogprob = -r          E[grad] = grad KL(policy || ref), the reverse KL
        k3: d/dlogprob = 1 - e^r     E[grad] = grad KL(ref || policy), the *forward* KL
                                     (a mass-covering pull; GRPO's and verl's "low_var_kl")

    (Expectations over the policy's own samples, i.e. on-policy; see Tang & Munos 2025, "On a few
    pitfalls in KL divergence gradient estimation for RL".)

    Args:
        logprobs: ``[B, T]`` current policy log-probs (carries the gradient).
        ref_logprobs: ``[B, T]`` reference log-probs (detached).  mask: ``[B, T]``.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.  aggregation, norm_length: see ``aggregate_loss``.
    """
    per_token = per_token_kl(logprobs, ref_logprobs.detach(), mask, estimator)
    return aggregate_loss(per_token, mask, aggregation, norm_length)
