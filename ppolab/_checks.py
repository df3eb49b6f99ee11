"""Small input validators shared by the tensor math.

Every check raises ``ValueError`` whose message names the offending argument,
so a bad call fails at the boundary instead of as a silent NaN three steps
later. Checks on tensor *values* (mask structure, finiteness) call ``.any()``
/ ``.all()``, i.e. one host sync each; that is cheap next to a forward pass
and buys loud failures.
"""
import math

import torch


def check_same_shape(**named: torch.Tensor) -> None:
    """All named tensors must have one shape, e.g. ``check_same_shape(logprobs=a, mask=m)``."""
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {list(s)}" for name, s in shapes.items())
        raise ValueError(f"shape mismatch: {listed}")


def check_shape(tensor: torch.Tensor, expected: tuple, name: str) -> None:
    """``tensor`` must have exactly the shape ``expected``."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {list(expected)}, got {list(tensor.shape)}")


def check_floating(**named: torch.Tensor) -> None:
    """All named tensors must have a floating-point dtype."""
    for name, t in named.items():
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Validate a response mask ``[B, T]`` and return it as a bool tensor.

    Rules: 2-D with at least one row; values 0/1 (bool, int or float);
    each row is ones then zeros (valid tokens up to and including EOS, then
    padding); each row has at least one valid token (an empty row would make
    "last valid token" and per-row means undefined).
    """
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, T], got shape {list(mask.shape)}")
    if mask.shape[0] == 0:
        raise ValueError(f"{name} has no rows (B = 0)")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1")
        mask = mask != 0
    if mask.shape[1] > 0:
        # A valid token right after a padding token breaks "ones then zeros".
        bad = mask[:, 1:] & ~mask[:, :-1]
        if bad.any():
            b, t = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{name} row {b} is not ones-then-zeros (valid token at position {t + 1} after padding)"
            )
    empty = ~mask.any(dim=1)
    if empty.any():
        raise ValueError(f"{name} row {int(empty.nonzero()[0, 0])} has no valid token")
    return mask


def check_finite(x: torch.Tensor, mask: torch.Tensor, name: str, allow_neg_inf: bool = False) -> None:
    """No NaN/inf in ``x`` on valid positions of ``mask`` (a bool ``[B, T]``).

    ``x`` may have extra trailing dims (e.g. logits ``[B, T, V]``); the mask
    is broadcast over them. ``allow_neg_inf`` admits ``-inf`` (masked-out
    vocabulary logits). Padding positions are never inspected.
    """
    bad = torch.isnan(x) | (x == math.inf)
    if not allow_neg_inf:
        bad = bad | (x == -math.inf)
    bad = bad & mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has a non-finite value ({x[index].item()}) at valid position {index}")


def check_unit_interval(value: float, name: str) -> float:
    """``value`` must be a number in [0, 1]; returns it as a float."""
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_positive(value: float, name: str) -> float:
    """``value`` must be a finite number > 0; returns it as a float."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative(value: float, name: str) -> float:
    """``value`` must be a finite number >= 0; returns it as a float."""
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value
