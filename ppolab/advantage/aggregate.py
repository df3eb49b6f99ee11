"""Loss aggregation: how a per-token loss ``[B, T]`` becomes the scalar that is differentiated.

The choice weighs tokens differently, and that is where length bias lives (Liu et al. 2025,
"Understanding R1-Zero-like training"; verl's ``loss_agg_mode``):

    token-mean               sum of valid entries / number of valid tokens   every token weighs alike
    seq-mean-token-sum       mean over rows of each row's sum               long rows weigh more
    seq-mean-token-mean      mean over rows of each row's mean               (GRPO) a token of a short
                                                                             row weighs more
    seq-mean-token-sum-norm  sum of valid entries / (B * norm_length)        (Dr. GRPO) a constant
                                                                             normaliser: no length bias

Public as ``ppolab.ppo.aggregate_loss``; it sits here, beside ``masked_mean``, because both the
policy loss (``ppo``) and the KL loss (``reward_kl``) reduce with it and this package imports
nothing of theirs.
"""
import torch

from .._checks import check_floating, check_mask, check_positive, check_same_shape
from .whiten import _stat_dtype

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def check_aggregation(mode: str) -> str:
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    return mode


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss to a scalar with one of ``AGGREGATIONS`` (see the module docstring).

    Args:
        loss: ``[B, T]`` float (may carry a gradient).  mask: ``[B, T]``.
        mode: one of ``AGGREGATIONS``.
        norm_length: only for ``"seq-mean-token-sum-norm"``: the constant length L (> 0);
            defaults to T. Give a fixed L (e.g. ``max_new_tokens``) wherever batches of different
            widths must agree: micro-batches, ranks.
    Returns:
        ``[]`` in ``loss.dtype``. Masked entries are never read (nor get a gradient).
    """
    check_aggregation(mode)
    check_floating(loss=loss)
    check_same_shape(loss=loss, mask=mask)
    mask = check_mask(mask)
    if norm_length is not None and mode != "seq-mean-token-sum-norm":
        raise ValueError(f"norm_length applies to 'seq-mean-token-sum-norm' only, not {mode!r}")
    x = torch.where(mask, loss.to(_stat_dtype(loss.dtype)), 0.0)
    if mode == "token-mean":
        out = x.sum() / mask.sum()
    elif mode == "seq-mean-token-sum":
        out = x.sum(dim=1).mean()
    elif mode == "seq-mean-token-mean":
        out = (x.sum(dim=1) / mask.sum(dim=1)).mean()
    else:
        length = loss.shape[1] if norm_length is None else check_positive(norm_length, "norm_length")
        out = x.sum() / (loss.shape[0] * length)
    return out.to(loss.dtype)


def aggregation_units(mask: torch.Tensor, mode: str) -> int:
    """How much of what ``mode`` averages over this batch holds: valid tokens for token-mean, rows
    for the seq-mean modes. Micro-batches (and ranks) weigh their ``aggregate_loss`` by their share
    of the minibatch's units, so the weighted sum equals the whole minibatch's ``aggregate_loss``."""
    check_aggregation(mode)
    return int(mask.sum()) if mode == "token-mean" else int(mask.shape[0])
