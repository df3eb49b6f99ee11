"""Critic-free, sequence-level advantages from groups of samples of one prompt.

The rollout holds ``B = n_prompts * group_size`` rows, each prompt's samples in consecutive rows
(``PPOTrainer`` repeats every prompt ``group_size`` times). The baseline of a sample is computed
from its own group only, so no value model is needed:

    GRPO      (Shao et al. 2024)   A_i = (s_i - mean_g) / (std_g + eps)     std_g unbiased (n - 1)
    Dr. GRPO  (Liu et al. 2025)    A_i =  s_i - mean_g                       no std: no difficulty bias
    RLOO      (Ahmadian et al. 2024) A_i = s_i - mean of the other n - 1 scores of the group
                                       = n / (n - 1) * (s_i - mean_g)

``expand_to_tokens`` then puts the sequence advantage on every valid token of its response.
Statistics are taken in at least float32 and cast back, as in ``whiten.py``.
"""
import torch

from .._checks import check_floating, check_mask, check_positive, check_shape
from .whiten import _stat_dtype

SCALES = ("std", "none")


def _groups(scores: torch.Tensor, group_size: int, min_size: int) -> torch.Tensor:
    """``scores`` ``[B]`` checked and viewed as ``[B / group_size, group_size]`` in the stats dtype."""
    check_floating(scores=scores)
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {list(scores.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(f"group_size must be an int >= {min_size}, got {group_size!r}")
    if len(scores) == 0 or len(scores) % group_size:
        raise ValueError(f"scores has {len(scores)} rows, not a positive multiple of group_size={group_size}")
    bad = ~torch.isfinite(scores)
    if bad.any():
        raise ValueError(f"scores has a non-finite value at row {int(bad.nonzero()[0, 0])}")
    return scores.to(_stat_dtype(scores.dtype)).view(-1, group_size)


def _zero_if_identical(g: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """A group of identical scores carries no signal: exactly 0, not the rounding error of its mean
    (e.g. three 0.1s in float32) blown up by a near-zero std."""
    identical = (g == g[:, :1]).all(dim=1, keepdim=True)
    return torch.where(identical, 0.0, advantages)


def group_advantages(scores: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """GRPO (``scale="std"``) or Dr. GRPO (``scale="none"``) advantages, ``[B]``.

    Args:
        scores: ``[B]`` sequence rewards, groups of ``group_size`` consecutive rows per prompt.
        group_size: samples per prompt; >= 2 for ``"std"`` (the unbiased std needs two).
        scale: ``"std"``: ``(s - mean_g) / (std_g + eps)``; ``"none"``: ``s - mean_g``.
        eps: > 0, guards a near-zero std. A group of identical scores gets exactly 0.
    Returns:
        ``[B]`` in ``scores.dtype``; each group sums to 0.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    eps = check_positive(eps, "eps")
    g = _groups(scores, group_size, min_size=2 if scale == "std" else 1)
    centered = g - g.mean(dim=1, keepdim=True)
    if scale == "std":
        centered = centered / (g.std(dim=1, keepdim=True, unbiased=True) + eps)
    return _zero_if_identical(g, centered).reshape(-1).to(scores.dtype)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages, ``[B]``: each score minus the mean of the other
    ``group_size - 1`` scores of its group (a baseline independent of the sample itself, so the
    policy gradient stays unbiased).

    Args:
        scores: ``[B]``, groups of ``group_size`` (>= 2) consecutive rows per prompt.
    Returns:
        ``[B]`` in ``scores.dtype``.
    """
    g = _groups(scores, group_size, min_size=2)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return _zero_if_identical(g, g - others).reshape(-1).to(scores.dtype)


def expand_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A sequence-level advantage on every valid token of its row, ``[B, T]``; 0 on padding.

    Args:
        advantages: ``[B]`` float.  mask: ``[B, T]``.
    """
    check_floating(advantages=advantages)
    mask = check_mask(mask)
    check_shape(advantages, mask.shape[:1], "advantages")
    return torch.where(mask, advantages[:, None], 0.0)
