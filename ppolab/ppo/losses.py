"""PPO losses: clipped policy surrogate, clipped value loss, entropy.

The policy loss is reduced with ``aggregate_loss`` (token-mean by default, or a
seq-mean mode); the value loss is a token-level mean over the valid tokens of the batch
(``masked_mean``). The rollout-time quantities (``old_logprobs``,
``advantages``, ``old_values``, ``returns``) are constants of the surrogate
objective, so they are detached here: a forgotten ``.detach()`` upstream
cannot leak gradients into the value head or the old policy.
"""
import torch

from .._checks import check_finite, check_floating, check_mask, check_positive, check_same_shape
from ..advantage.aggregate import aggregate_loss
from ..advantage.whiten import _masked_mean


def _validate(mask: torch.Tensor, clip_eps: float, **named: torch.Tensor):
    check_floating(**named)
    check_same_shape(**named, mask=mask)
    mask = check_mask(mask)
    for name, x in named.items():
        check_finite(x, mask, name)
    return mask, check_positive(clip_eps, "clip_eps")


def _stat(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mean(x.detach(), mask)


def policy_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """Importance ratio ``pi(a|s) / pi_old(a|s) = exp(logprobs - old_logprobs)``, same shape as inputs."""
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs)
    return torch.exp(logprobs - old_logprobs)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    *,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    norm_length: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    Per token, ``l = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high))``, reduced with
    ``aggregate_loss(l, mask, aggregation, norm_length)``. The max (pessimistic bound) removes the
    incentive to push the ratio beyond the clip range in the direction the advantage favours: on
    such tokens the clipped term is selected and the gradient is 0.

    * ``clip_eps_high`` (clip-higher, DAPO, Yu et al. 2025): a wider upper bound lets unlikely
      tokens with positive advantage grow faster, against entropy collapse. Default: ``clip_eps``.
    * ``dual_clip=c`` (> 1; Ye et al. 2020): for ``A < 0`` the loss is capped at ``-c * A``, so a
      token whose ratio exploded cannot dominate the update (its gradient there is 0).

    Args:
        logprobs: ``[B, T]`` current policy log-probs (carries the gradient).
        old_logprobs: ``[B, T]`` rollout-time log-probs (detached).
        advantages: ``[B, T]`` (detached).
        mask: ``[B, T]``.  clip_eps, clip_eps_high: > 0.
        aggregation, norm_length: see ``aggregate_loss``.
        weights: optional ``[B, T]`` constants multiplying each token's loss before aggregation
            (detached): the rollout correction's ``rollout_correction_weights``.
    Returns:
        ``(loss, stats)``; loss is a scalar in the inputs' dtype; stats holds detached token
        means: ``clipfrac`` (share of valid tokens with the ratio outside the clip range, =
        ``clipfrac_low + clipfrac_high``), ``clipfrac_low`` / ``clipfrac_high`` (below / above),
        ``dual_clipfrac`` (tokens capped by the dual clip; 0 without it), ``approx_kl`` (mean of
        the k2 estimator ``0.5 * (logprobs - old_logprobs)**2`` of KL(old || new)), ``ratio_mean``.
    """
    mask, eps = _validate(mask, clip_eps, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    eps_high = eps if clip_eps_high is None else check_positive(clip_eps_high, "clip_eps_high")
    if dual_clip is not None and not float(dual_clip) > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    # Zero padding *before* any arithmetic so junk there cannot reach values or gradients.
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), 0.0)
    advantages = torch.where(mask, advantages.detach(), 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - eps, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_hit = torch.zeros_like(mask)
    if dual_clip is not None:
        cap = -float(dual_clip) * advantages  # > 0 where A < 0
        dual_hit = (advantages < 0) & (per_token > cap)
        per_token = torch.where(dual_hit, cap, per_token)
    if weights is not None:
        check_same_shape(weights=weights, mask=mask)
        per_token = per_token * torch.where(mask, weights.detach().to(per_token.dtype), 0.0)
    loss = aggregate_loss(per_token, mask, aggregation, norm_length).to(logprobs.dtype)
    low, high = (ratio < 1.0 - eps).to(ratio.dtype), (ratio > 1.0 + eps_high).to(ratio.dtype)
    stats = {
        "clipfrac": _stat(low + high, mask),
        "clipfrac_low": _stat(low, mask),
        "clipfrac_high": _stat(high, mask),
        "dual_clipfrac": _stat(dual_hit.to(ratio.dtype), mask),
        "approx_kl": _stat(0.5 * log_ratio.square(), mask),
        "ratio_mean": _stat(ratio, mask),
    }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines' PPO2 and TRL).

    ``loss = 0.5 * masked_mean(max((V - R)**2, (V_old + clip(V - V_old, -eps, eps) - R)**2))``.
    The prediction may move at most ``eps`` from its rollout-time value before
    the loss stops rewarding the move; note ``eps`` is in reward units.

    Args:
        values: ``[B, T]`` current value predictions (carries the gradient).
        old_values: ``[B, T]`` rollout-time values (detached).
        returns: ``[B, T]`` targets, e.g. from ``gae`` (detached).
        mask: ``[B, T]``.  clip_eps: > 0.
    Returns:
        ``(loss, stats)``; stats: ``value_clipfrac``, the share of valid
        tokens with ``|V - V_old| > eps`` (prediction was clipped), detached.
    """
    mask, eps = _validate(mask, clip_eps, values=values, old_values=old_values, returns=returns)
    values = torch.where(mask, values, 0.0)
    old_values = torch.where(mask, old_values.detach(), 0.0)
    returns = torch.where(mask, returns.detach(), 0.0)
    values_clipped = old_values + torch.clamp(values - old_values, -eps, eps)
    per_token = torch.maximum((values - returns).square(), (values_clipped - returns).square())
    loss = (0.5 * _masked_mean(per_token, mask)).to(values.dtype)
    clipped = ((values - old_values).abs() > eps).to(values.dtype)
    return loss, {"value_clipfrac": _stat(clipped, mask)}


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the policy's next-token distribution, ``[B, T]``; 0 on padding.

    ``H = -sum_v p_v log p_v`` with ``log p = log_softmax(logits)`` (a
    logsumexp, stable for large logits). ``-inf`` logits (vocabulary masked
    out) are allowed: their ``0 * log 0`` terms count as 0, without NaN in
    value or gradient. For the entropy bonus use
    ``masked_mean(entropy_from_logits(logits, mask), mask)``.

    Args:
        logits: ``[B, T, V]``.  mask: ``[B, T]``.
    """
    check_floating(logits=logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be 3-D [B, T, V], got shape {list(logits.shape)}")
    if tuple(logits.shape[:2]) != tuple(mask.shape):
        raise ValueError(f"logits [B, T, V] {list(logits.shape)} does not match mask {list(mask.shape)}")
    mask = check_mask(mask)
    check_finite(logits, mask, "logits", allow_neg_inf=True)
    all_neg_inf = (logits == -torch.inf).all(dim=-1) & mask
    if all_neg_inf.any():
        index = tuple(int(i) for i in all_neg_inf.nonzero()[0])
        raise ValueError(f"logits are all -inf at valid position {index}: no token has probability > 0")
    logits = torch.where(mask[..., None], logits, 0.0)
    logp = torch.log_softmax(logits, dim=-1)
    # Replace log 0 = -inf by 0 where p = 0, so p * log p is 0 * 0 (and so is its gradient).
    logp_safe = torch.where(logp == -torch.inf, 0.0, logp)
    entropy = -(logp.exp() * logp_safe).sum(dim=-1)
    return torch.where(mask, entropy, 0.0)
