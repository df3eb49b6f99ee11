"""Masked batch statistics: mean, variance and whitening over valid tokens.

Means are token-level over the whole batch (sum over valid tokens / number
of valid tokens), so a long response weighs more than a short one - the
convention of TRL and of the PPO-for-RLHF literature. Padding is never read:
it is replaced by 0 with ``torch.where`` before summing (multiplying by the
mask would turn junk ``inf``/``NaN`` into ``NaN``).

Statistics are accumulated in at least float32 and cast back to the input
dtype: float16 cannot even count past 2048 tokens exactly, and ``eps=1e-8``
underflows to 0 in float16.
"""
import torch

from .._checks import check_floating, check_mask, check_positive, check_same_shape


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Unchecked masked mean; ``mask`` is bool. Result in the stats dtype."""
    x = torch.where(mask, x.to(_stat_dtype(x.dtype)), 0.0)
    if dim is None:
        return x.sum() / mask.sum()
    return x.sum(dim=dim) / mask.sum(dim=dim)


def _masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Unchecked masked variance over all valid tokens. Result in the stats dtype."""
    x = x.to(_stat_dtype(x.dtype))
    centered = torch.where(mask, x - _masked_mean(x, mask), 0.0)
    n = mask.sum()
    # With one valid token the centered sum is exactly 0; dividing by
    # max(n - 1, 1) then defines the Bessel-corrected variance as 0, not NaN.
    denom = (n - 1).clamp_min(1) if unbiased else n
    return centered.square().sum() / denom


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` over valid tokens.

    Args:
        x: ``[B, T]`` float.
        mask: ``[B, T]`` bool/0-1, ones then zeros per row.
        dim: ``None`` -> scalar mean over all valid tokens of the batch;
            ``1`` (or ``-1``) -> ``[B]`` per-row means; ``0`` -> ``[T]``
            per-position means, which are NaN (0/0) at positions where no row
            has a valid token.
    Returns:
        Tensor in ``x.dtype``: ``[]``, ``[B]`` or ``[T]``.
    """
    check_floating(x=x)
    check_same_shape(x=x, mask=mask)
    mask = check_mask(mask)
    return _masked_mean(x, mask, dim).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid tokens of the batch, ``[]``.

    ``unbiased=True`` uses Bessel's correction (divide by n - 1, n = number of
    valid tokens). With a single valid token that is 0/0; we define the
    result as **0** (the sample shows no spread) so that whitening a
    one-token batch is well defined instead of NaN.

    Args:
        x: ``[B, T]`` float.  mask: ``[B, T]``.
    """
    check_floating(x=x)
    check_same_shape(x=x, mask=mask)
    mask = check_mask(mask)
    return _masked_var(x, mask, unbiased).to(x.dtype)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    *,
    mean: torch.Tensor | float | None = None,
    var: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Normalise valid tokens to zero mean and unit variance: ``(x - mean) / sqrt(var + eps)``.

    Mean and (unbiased) variance are taken over all valid tokens of the batch,
    so a row depends on the other rows only through these two moments.
    ``shift_mean=False`` adds the mean back, i.e. only rescales - TRL's
    meaning (used for rewards, whose sign carries information).
    A single valid token has variance 0 (see ``masked_var``) and whitens to 0
    (or to itself with ``shift_mean=False``).

    Args:
        x: ``[B, T]`` float.  mask: ``[B, T]``.  eps: > 0, guards var = 0.
        mean, var: precomputed moments to use instead of this batch's, both or
            neither - e.g. those of a larger batch this one is a shard of
            (``ppolab.distributed.global_masked_whiten`` passes the moments of
            all ranks' tokens).
    Returns:
        ``[B, T]`` in ``x.dtype``; 0 on padding.
    """
    check_floating(x=x)
    check_same_shape(x=x, mask=mask)
    mask = check_mask(mask)
    eps = check_positive(eps, "eps")
    if (mean is None) != (var is None):
        raise ValueError("masked_whiten: give both mean and var, or neither")
    xs = x.to(_stat_dtype(x.dtype))
    if mean is None:
        mean, var = _masked_mean(xs, mask), _masked_var(xs, mask)
    else:
        mean = torch.as_tensor(mean, dtype=xs.dtype, device=xs.device)
        var = torch.as_tensor(var, dtype=xs.dtype, device=xs.device)
    whitened = (xs - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0).to(x.dtype)
