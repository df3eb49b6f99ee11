"""Pairwise preference losses: Bradley–Terry, DPO (sigmoid / IPO) and ORPO's odds-ratio term.

Every loss is *per example*: tensors of shape ``[B]`` in, ``[B]`` out, so the caller
chooses the reduction (mean over the batch, a weighted sum, ...). All inputs are
validated eagerly: a silently broadcast shape or a NaN that slips into a preference
loss produces a model that "trains" without learning, which is much harder to debug
than an exception.

Notation used in the docstrings (all ``[B]``):

* ``pi_c, pi_r``  – policy log-probabilities of the chosen / rejected response,
  summed over response tokens: ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)``.
* ``ref_c, ref_r`` – the same under the frozen reference model.
* ``h = (pi_c - pi_r) - (ref_c - ref_r)`` – the DPO "implicit reward margin" divided by beta.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

__all__ = [
    "LN2",
    "ORPO_MAX_LOGP",
    "DPO_LOSS_TYPES",
    "bradley_terry_loss",
    "dpo_loss",
    "log1mexp",
    "log_odds",
    "orpo_odds_ratio_loss",
]

LN2 = math.log(2.0)

#: Largest (length-averaged) log-probability fed to the log-odds. log odds(p) = log p - log(1 - p)
#: diverges as p -> 1 (logp -> 0), and its derivative 1 / (1 - p) blows up with it. Clamping
#: logp to at most -1e-6 (p <= 1 - 1e-6) bounds the derivative by ~1e6, keeps float32 exact enough
#: (exp(-1e-6) is still distinguishable from 1 in float32, whose eps is 1.2e-7), and only affects a
#: sequence whose *every* token already has probability > 0.999999 – there the odds-ratio term has
#: nothing left to teach, and the clamp makes its gradient exactly zero.
ORPO_MAX_LOGP = -1e-6

DPO_LOSS_TYPES = ("sigmoid", "ipo")


# --------------------------------------------------------------------------- validation helpers


def _check_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _check_same_shape(**named: torch.Tensor) -> None:
    # Equal shapes, not broadcastable ones: [B] against [B, 1] would silently build a [B, B] loss.
    items = list(named.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape {tuple(first.shape)};"
                " all per-example inputs must have the same shape"
            )


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return float(beta)


# --------------------------------------------------------------------------- Bradley–Terry


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood of preferring ``chosen`` over ``rejected``.

    ``loss = -log sigmoid(r_c - r_r - margin)``, i.e. the model P(c > r) = sigmoid(r_c - r_r)
    of a reward model. A positive ``margin`` (Llama-2 style) demands that the reward gap
    exceed it before the loss becomes small.

    Args:
        chosen_rewards: ``[B]`` scalar rewards of the preferred responses.
        rejected_rewards: ``[B]`` scalar rewards of the dispreferred responses.
        margin: ``None`` (no margin), a python float, or a ``[B]`` (or 0-dim) tensor.

    Returns:
        ``[B]`` per-example losses.
    """
    _check_tensor("chosen_rewards", chosen_rewards)
    _check_tensor("rejected_rewards", rejected_rewards)
    _check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            _check_tensor("margin", margin)
            if margin.dim() != 0:
                _check_same_shape(chosen_rewards=chosen_rewards, margin=margin)
        elif isinstance(margin, bool) or not isinstance(margin, Real) or not math.isfinite(margin):
            raise ValueError(f"margin must be None, a finite number or a tensor, got {margin!r}")
        diff = diff - margin
    # logsigmoid is computed stably for both signs (no exp overflow for large |diff|).
    return -F.logsigmoid(diff)


# --------------------------------------------------------------------------- DPO / IPO


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization loss (Rafailov et al. 2023) and its IPO variant.

    With ``h = (pi_c - pi_r) - (ref_c - ref_r)`` (summed sequence log-probabilities):

    * ``loss_type="sigmoid"`` (DPO, with conservative label smoothing, "cDPO"):
      ``-(1 - ls) * log sigmoid(beta h) - ls * log sigmoid(-beta h)``. ``ls`` is the assumed
      probability that a preference label is flipped; ``ls < 0.5`` so the target still favours
      ``chosen``.
    * ``loss_type="ipo"`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2``, a squared loss whose
      minimum is at the finite margin ``h = 1 / (2 beta)`` instead of pushing h to infinity.
      Here it is applied to *summed* log-probabilities like DPO (some implementations average
      over tokens instead; then ``beta`` must be rescaled). Label smoothing is undefined for IPO
      and rejected.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` policy log-probs (with grad).
        ref_chosen_logps, ref_rejected_logps: ``[B]`` reference log-probs (normally no grad).
        beta: KL-regularisation strength, > 0.
        label_smoothing: in ``[0, 0.5)``; must be 0 for IPO.
        loss_type: ``"sigmoid"`` or ``"ipo"``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``. The implicit rewards
        ``beta * (policy - reference)`` are detached: they are metrics, not part of the loss graph.
    """
    names = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    for name, t in names.items():
        _check_tensor(name, t)
    _check_same_shape(**names)
    beta = _check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, Real)
        or not (0.0 <= label_smoothing < 0.5)
    ):
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if loss_type == "ipo" and label_smoothing != 0.0:
        raise ValueError("label_smoothing must be 0 with loss_type='ipo' (IPO has no label-noise model)")

    # Group as (policy ratio) - (reference ratio): each ratio subtracts two numbers of similar
    # magnitude from the same model, which keeps cancellation error small.
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
        if label_smoothing > 0.0:
            losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * h)
    else:  # ipo
        losses = (h - 1.0 / (2.0 * beta)) ** 2

    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------- ORPO


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate over the whole range (Mächler 2012).

    Near 0, ``1 - exp(x)`` cancels catastrophically, so use ``log(-expm1(x))``; far from 0,
    ``exp(x)`` is tiny and ``log1p(-exp(x))`` is exact where ``-expm1(x)`` would round to 1.
    The switch point ``-ln 2`` is where both formulas have equal (small) relative error.

    Both branches are evaluated on a *masked* copy of ``x`` (the other branch gets the safe
    value -1), so ``torch.where`` never multiplies a 0 upstream gradient by an inf from the
    unselected branch (which would give NaN). ``x = 0`` returns ``-inf``; ``x > 0`` is NaN.

    Shapes: any, elementwise.
    """
    near_zero = x > -LN2
    safe = torch.full_like(x, -1.0)
    x_near = torch.where(near_zero, x, safe)
    x_far = torch.where(near_zero, safe, x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p)) = logp - log(1 - exp(logp))`` with ``logp`` clamped to ``<= ORPO_MAX_LOGP``.

    Shapes: any, elementwise. See :data:`ORPO_MAX_LOGP` for why the clamp exists. The clamp is
    written as an explicit ``where`` so its derivative is unambiguous: 1 for
    ``logp < ORPO_MAX_LOGP``, 0 for ``logp >= ORPO_MAX_LOGP`` (boundary included).
    """
    logp = torch.where(logp < ORPO_MAX_LOGP, logp, torch.full_like(logp, ORPO_MAX_LOGP))
    return logp - log1mexp(logp)


def orpo_odds_ratio_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """ORPO's odds-ratio term (Hong et al. 2024): ``-beta * log sigmoid(log odds(c) - log odds(r))``.

    Inputs are *length-averaged* response log-probabilities (mean over response tokens), as in
    the paper: averaging keeps ``p = exp(avg logp)`` away from 0 for long sequences so the odds
    are informative. ``log odds`` is computed with :func:`log1mexp` after clamping to
    ``logp <= ORPO_MAX_LOGP`` (= -1e-6).

    Args:
        chosen_avg_logps: ``[B]`` average log-probs of chosen responses, all ``<= 0``.
        rejected_avg_logps: ``[B]`` same for rejected responses.
        beta: weight of the odds-ratio term (the paper's lambda), > 0.

    Returns:
        ``[B]`` per-example odds-ratio losses (add the chosen NLL yourself for the full ORPO loss).
    """
    _check_tensor("chosen_avg_logps", chosen_avg_logps)
    _check_tensor("rejected_avg_logps", rejected_avg_logps)
    _check_same_shape(chosen_avg_logps=chosen_avg_logps, rejected_avg_logps=rejected_avg_logps)
    beta = _check_beta(beta)
    for name, t in (("chosen_avg_logps", chosen_avg_logps), ("rejected_avg_logps", rejected_avg_logps)):
        if bool((t > 0).any()):
            raise ValueError(f"{name} must be <= 0 (log-probabilities), got a positive value")
    ratio = log_odds(chosen_avg_logps) - log_odds(rejected_avg_logps)
    return -beta * F.logsigmoid(ratio)
