"""Property tests of ppolab.preference.losses against plain-loop `math` references.

Every reference below is a scalar Python loop over the batch using only `math`, with
analytical derivatives written out by hand. Inputs are rounded to the tested dtype first and the
reference is computed from the rounded values in float64, so the only discrepancy left is the
library's own arithmetic in that dtype; tolerances are first-order error bounds of that
arithmetic (a few ulps times the magnitudes involved), not ad-hoc constants.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ppolab.preference.losses import (
    LN2,
    ORPO_MAX_LOGP,
    bradley_terry_loss,
    dpo_loss,
    log1mexp,
    log_odds,
    orpo_odds_ratio_loss,
)

DTYPES = [torch.float32, torch.float64]
EXTREME_LOGPS = [-1e4, -1e3, -50.0, -1.0, -LN2, -0.5, -1e-3, -1e-6, -1e-7, -1e-9, -1e-30, 0.0]

@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: intra-op threads only add sync overhead, which on the shared
    2-core CI box under load made these tests ~10x slower. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- math references


def m_logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def m_sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def m_log1mexp(x: float) -> float:
    return math.log(-math.expm1(x)) if x > -LN2 else math.log1p(-math.exp(x))


def eps(dtype) -> float:
    return torch.finfo(dtype).eps


def assert_close(actual, expected, tol, what=""):
    """|a - e| <= tol + 8 ulp(e), elementwise, with a helpful message."""
    for i, (a, e, t) in enumerate(zip(actual, expected, tol, strict=True)):
        bound = t + 8 * abs(e) * 2.3e-16 + 1e-300
        assert math.isfinite(a), f"{what}[{i}] not finite: {a}"
        assert abs(a - e) <= bound, f"{what}[{i}]: got {a!r}, expected {e!r} (tol {bound:.3g})"


# ----------------------------------------------------------------------------- strategies

logp_floats = st.one_of(
    st.floats(min_value=-1e4, max_value=0.0, allow_nan=False, allow_infinity=False),
    st.sampled_from(EXTREME_LOGPS),
)
reward_floats = st.one_of(
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False),
    st.sampled_from([-1e4, 1e4, 0.0, 1e-9, -1e-9, 40.0, -40.0]),
)
betas = st.one_of(st.floats(min_value=1e-3, max_value=10.0), st.sampled_from([0.1, 1e-3, 10.0]))
dtypes = st.sampled_from(DTYPES)


@st.composite
def columns(draw, k: int, elements):
    """k equal-length lists (a batch of B examples, B in 1..6)."""
    n = draw(st.integers(1, 6))
    return [draw(st.lists(elements, min_size=n, max_size=n)) for _ in range(k)]


def leaves(cols, dtype):
    """Rounded tensors with grad, plus their rounded values as Python floats."""
    ts = [torch.tensor(c, dtype=dtype, requires_grad=True) for c in cols]
    return ts, [t.detach().tolist() for t in ts]


def grads_of(loss, ts):
    return torch.autograd.grad(loss.sum(), ts)


# ----------------------------------------------------------------------------- Bradley–Terry


@given(columns(3, reward_floats), dtypes, st.sampled_from(["none", "float", "tensor"]))
def test_bradley_terry_matches_loop(cols, dtype, margin_kind):
    (a_t, b_t, m_t), (a, b, m) = leaves(cols, dtype)
    if margin_kind == "none":
        margin, m = None, [0.0] * len(a)
    elif margin_kind == "float":
        margin = m[0]
        m = [margin] * len(a)
    else:
        margin = m_t
    loss = bradley_terry_loss(a_t, b_t, margin)
    ga, gb = torch.autograd.grad(loss.sum(), [a_t, b_t])
    e = eps(dtype)
    ref, ref_ga, tol, gtol = [], [], [], []
    for ai, bi, mi in zip(a, b, m):
        z = ai - bi - mi
        ref.append(-m_logsigmoid(z))
        ref_ga.append(-m_sigmoid(-z))  # d/da -log sigmoid(z) = -sigmoid(-z); d/db = +sigmoid(-z)
        z_err = 3 * e * (abs(ai) + abs(bi) + abs(mi))
        tol.append(z_err + 4 * e * abs(ref[-1]))
        gtol.append(z_err / 4 + 4 * e)
    assert loss.dtype == dtype and loss.shape == a_t.shape
    assert_close(loss.tolist(), ref, tol, "bt loss")
    assert_close(ga.tolist(), ref_ga, gtol, "bt dL/dchosen")
    assert_close(gb.tolist(), [-g for g in ref_ga], gtol, "bt dL/drejected")


@given(columns(2, reward_floats), dtypes)
def test_bradley_terry_antisymmetry(cols, dtype):
    # logsigmoid(x) - logsigmoid(-x) = x  =>  loss(a, b) - loss(b, a) = -(a - b).
    a = torch.tensor(cols[0], dtype=dtype)
    b = torch.tensor(cols[1], dtype=dtype)
    lhs = bradley_terry_loss(a, b) - bradley_terry_loss(b, a)
    scale = (a.abs() + b.abs()).max().item()
    torch.testing.assert_close(lhs, -(a - b), rtol=0, atol=16 * eps(dtype) * (1 + scale))


@given(columns(3, st.floats(-50, 50)), dtypes)
def test_bradley_terry_margin_is_a_shift(cols, dtype):
    a, b, m = (torch.tensor(c, dtype=dtype) for c in cols)
    torch.testing.assert_close(bradley_terry_loss(a, b, m), bradley_terry_loss(a - m, b))


# ----------------------------------------------------------------------------- DPO / IPO


@given(
    columns(4, logp_floats),
    betas,
    st.one_of(st.just(0.0), st.floats(0.0, 0.49)),
    dtypes,
)
def test_dpo_sigmoid_matches_loop(cols, beta, ls, dtype):
    ts, (pc, pr, rc, rr) = leaves(cols, dtype)
    losses, c_rew, r_rew = dpo_loss(*ts, beta=beta, label_smoothing=ls)
    grads = grads_of(losses, ts)
    e = eps(dtype)
    ref, ref_dh, tol, gtol = [], [], [], []
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = (a - b) - (c - d)
        z = beta * h
        ref.append(-(1 - ls) * m_logsigmoid(z) - ls * m_logsigmoid(-z))
        # dL/dh = beta * (-(1-ls) sigmoid(-z) + ls sigmoid(z)); dh/d(pc, pr, rc, rr) = (1, -1, -1, 1)
        ref_dh.append(beta * (-(1 - ls) * m_sigmoid(-z) + ls * m_sigmoid(z)))
        z_err = beta * 4 * e * (abs(a) + abs(b) + abs(c) + abs(d)) + 2 * e * abs(z)
        tol.append(z_err + 4 * e * abs(ref[-1]))
        gtol.append(beta * (z_err / 4 + 4 * e))
    assert_close(losses.tolist(), ref, tol, "dpo loss")
    for g, sign, name in zip(grads, (1, -1, -1, 1), ("pc", "pr", "rc", "rr")):
        assert_close(g.tolist(), [sign * x for x in ref_dh], gtol, f"dpo dL/d{name}")
    # Implicit rewards: beta * (policy - reference), detached.
    assert not c_rew.requires_grad and not r_rew.requires_grad
    assert_close(c_rew.tolist(), [beta * (a - c) for a, c in zip(pc, rc)],
                 [beta * 2 * e * (abs(a) + abs(c)) for a, c in zip(pc, rc)], "chosen_rewards")
    assert_close(r_rew.tolist(), [beta * (b - d) for b, d in zip(pr, rr)],
                 [beta * 2 * e * (abs(b) + abs(d)) for b, d in zip(pr, rr)], "rejected_rewards")


@given(columns(4, logp_floats), betas, dtypes)
def test_ipo_matches_loop(cols, beta, dtype):
    ts, (pc, pr, rc, rr) = leaves(cols, dtype)
    losses, _, _ = dpo_loss(*ts, beta=beta, loss_type="ipo")
    grads = grads_of(losses, ts)
    e = eps(dtype)
    target = 1 / (2 * beta)
    ref, ref_dh, tol, gtol = [], [], [], []
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = (a - b) - (c - d)
        ref.append((h - target) ** 2)
        ref_dh.append(2 * (h - target))
        u_err = 4 * e * (abs(a) + abs(b) + abs(c) + abs(d)) + 2 * e * (abs(h) + target)
        tol.append(2 * abs(h - target) * u_err + u_err**2 + 4 * e * ref[-1])
        gtol.append(2 * u_err + 4 * e * abs(ref_dh[-1]))
    assert_close(losses.tolist(), ref, tol, "ipo loss")
    for g, sign, name in zip(grads, (1, -1, -1, 1), ("pc", "pr", "rc", "rr")):
        assert_close(g.tolist(), [sign * x for x in ref_dh], gtol, f"ipo dL/d{name}")


@given(columns(4, st.floats(-200, 0)), betas, dtypes)
def test_dpo_without_smoothing_is_minus_logsigmoid(cols, beta, dtype):
    pc, pr, rc, rr = (torch.tensor(c, dtype=dtype) for c in cols)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.0)
    h = (pc - pr) - (rc - rr)
    torch.testing.assert_close(losses, -torch.nn.functional.logsigmoid(beta * h))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
def test_ipo_minimum_at_half_inverse_beta(beta, dtype):
    target = 1 / (2 * beta)
    deltas = torch.tensor([0.0, 0.25, -0.25, 1.0, -3.0], dtype=dtype)
    pc = (target + deltas).requires_grad_()
    zeros = torch.zeros_like(deltas)
    losses, _, _ = dpo_loss(pc, zeros, zeros, zeros, beta=beta, loss_type="ipo")
    (g,) = torch.autograd.grad(losses.sum(), [pc])
    torch.testing.assert_close(losses, deltas**2)
    assert losses[0].item() == pytest.approx(0.0, abs=1e-5)
    assert g[0].item() == pytest.approx(0.0, abs=1e-4)  # stationary at h = 1/(2 beta)
    assert (losses[1:] > losses[0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_dpo_at_zero_margin(dtype):
    # h = 0 (policy == reference): sigmoid loss is log 2 for every label smoothing.
    x = torch.tensor([-3.0, -40.0], dtype=dtype)
    for ls in (0.0, 0.1, 0.3):
        losses, c, r = dpo_loss(x, x - 1, x, x - 1, beta=0.3, label_smoothing=ls)
        torch.testing.assert_close(losses, torch.full_like(x, math.log(2)))
        assert (c == 0).all() and (r == 0).all()


# ----------------------------------------------------------------------------- ORPO


def m_orpo(xc: float, xr: float, beta: float, ceiling: float):
    """Loss and analytical gradients of -beta log sigmoid(lo(xc) - lo(xr)), with the clamp."""
    def lo_and_dlo(x):
        if x >= ceiling:  # clamped (boundary included): constant, zero derivative
            x = ceiling
            d = 0.0
        else:
            d = -1.0 / math.expm1(x)  # d/dx [x - log(1 - e^x)] = 1 / (1 - e^x)
        return x - m_log1mexp(x), d, abs(x) + abs(m_log1mexp(x))

    lc, dlc, sc = lo_and_dlo(xc)
    lr, dlr, sr = lo_and_dlo(xr)
    d = lc - lr
    s = m_sigmoid(-d)
    return -beta * m_logsigmoid(d), -beta * s * dlc, beta * s * dlr, sc + sr, abs(dlc) + abs(dlr)


@given(columns(2, logp_floats), betas, dtypes)
def test_orpo_matches_loop(cols, beta, dtype):
    ts, (xc, xr) = leaves(cols, dtype)
    losses = orpo_odds_ratio_loss(*ts, beta=beta)
    gc, gr = grads_of(losses, ts)
    e = eps(dtype)
    ceiling = torch.tensor(ORPO_MAX_LOGP, dtype=dtype).item()  # the clamp bound as rounded in dtype
    ref, rgc, rgr, tol, gtol = [], [], [], [], []
    for a, b in zip(xc, xr):
        L, dc, dr, scale, dscale = m_orpo(a, b, beta, ceiling)
        ref.append(L)
        rgc.append(dc)
        rgr.append(dr)
        d_err = 8 * e * scale
        tol.append(beta * d_err + 4 * e * abs(L))
        gtol.append(beta * dscale * (d_err / 4 + 16 * e))
    assert_close(losses.tolist(), ref, tol, "orpo loss")
    assert_close(gc.tolist(), rgc, gtol, "orpo dL/dchosen")
    assert_close(gr.tolist(), rgr, gtol, "orpo dL/drejected")


@given(st.lists(logp_floats, min_size=1, max_size=8), dtypes)
def test_log1mexp_and_log_odds_match_math(xs, dtype):
    x = torch.tensor(xs, dtype=dtype)
    xs = x.tolist()
    e = eps(dtype)
    nonzero = [v for v in xs if v < 0]
    if nonzero:
        got = log1mexp(torch.tensor(nonzero, dtype=dtype)).tolist()
        ref = [m_log1mexp(v) for v in nonzero]
        # + a few subnormal ulps: exp(x) for x < -87 is subnormal in float32 (fewer digits).
        sub = torch.finfo(dtype).tiny * e
        assert_close(got, ref, [8 * e * abs(r) + 8 * sub for r in ref], "log1mexp")
    ceiling = torch.tensor(ORPO_MAX_LOGP, dtype=dtype).item()
    ref_lo = []
    for v in xs:
        v = min(v, ceiling)
        ref_lo.append(v - m_log1mexp(v))
    assert_close(log_odds(x).tolist(), ref_lo,
                 [8 * e * (abs(min(v, ceiling)) + abs(m_log1mexp(min(v, ceiling)))) for v in xs],
                 "log_odds")


def test_log1mexp_relative_accuracy_near_zero_and_switch():
    # Naive log(1 - exp(x)) loses all digits at x = -1e-12 in float64; log1mexp must not.
    x = torch.tensor([-1e-12, -1e-300, -LN2 * (1 + 1e-12), -LN2 * (1 - 1e-12), -40.0], dtype=torch.float64)
    ref = [m_log1mexp(v) for v in x.tolist()]
    torch.testing.assert_close(log1mexp(x), torch.tensor(ref, dtype=torch.float64), rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- finite differences


def test_gradcheck_finite_differences():
    torch.manual_seed(0)
    B = 5
    pc, pr, rc, rr = ((-30 * torch.rand(B, dtype=torch.float64)).requires_grad_() for _ in range(4))
    for loss_type, ls in (("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)):
        def f(a, b, c, d, ls=ls, loss_type=loss_type):
            return dpo_loss(a, b, c, d, beta=0.2, label_smoothing=ls, loss_type=loss_type)[0]

        assert torch.autograd.gradcheck(f, (pc, pr, rc, rr))
    a = (5 * torch.randn(B, dtype=torch.float64)).requires_grad_()
    b = torch.randn(B, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: bradley_terry_loss(x, y, 0.5), (a, b))
    # ORPO away from the clamp kink, on both sides of the log1mexp switch at -ln 2.
    xc = torch.tensor([-1e-3, -0.3, -0.69, -0.7, -2.0], dtype=torch.float64, requires_grad=True)
    xr = torch.tensor([-5.0, -0.05, -0.71, -0.68, -1e-2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: orpo_odds_ratio_loss(x, y, beta=0.3), (xc, xr))


# ----------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_give_finite_values_and_grads(dtype):
    vals = [-1e4, -1e-9, 0.0, -1e-30, -LN2, -7000.0]
    n = len(vals)
    combos = [(a, b) for a in vals for b in vals]
    a = torch.tensor([c[0] for c in combos], dtype=dtype, requires_grad=True)
    b = torch.tensor([c[1] for c in combos], dtype=dtype, requires_grad=True)
    z = torch.zeros(n * n, dtype=dtype)
    outs = [
        bradley_terry_loss(a * 1e0, b, 3.0),
        bradley_terry_loss(-a, b),  # reward differences of +-1e4
        dpo_loss(a, b, z, z, beta=10.0)[0],
        dpo_loss(a, b, b, a, beta=10.0, label_smoothing=0.3)[0],  # h up to 2e4
        dpo_loss(a, b, b, a, beta=1e-3, loss_type="ipo")[0],
        orpo_odds_ratio_loss(a, b, beta=10.0),
    ]
    for out in outs:
        assert torch.isfinite(out).all()
        ga, gb = torch.autograd.grad(out.sum(), [a, b])
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    # Saturation behaves like the asymptote: huge positive margin -> ~0 loss, huge negative -> linear.
    big = torch.tensor([1e4], dtype=dtype)
    assert bradley_terry_loss(big, -big).item() == 0.0
    assert bradley_terry_loss(-big, big).item() == pytest.approx(2e4, rel=1e-6)


# ----------------------------------------------------------------------------- validation


def _t(*v, dtype=torch.float32):
    return torch.tensor(v, dtype=dtype)


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: bradley_terry_loss(_t(1, 2), _t(1)), "rejected_rewards"),
        (lambda: bradley_terry_loss(_t(1, 2), _t(1, 2).reshape(2, 1)), "rejected_rewards"),
        (lambda: bradley_terry_loss(_t(float("nan")), _t(1)), "chosen_rewards"),
        (lambda: bradley_terry_loss(_t(1), _t(float("inf"))), "rejected_rewards"),
        (lambda: bradley_terry_loss(_t(1, 2), _t(1, 2), _t(1, 2, 3)), "margin"),
        (lambda: bradley_terry_loss(_t(1), _t(1), float("nan")), "margin"),
        (lambda: bradley_terry_loss(_t(1), _t(1), _t(float("-inf"))), "margin"),
        (lambda: dpo_loss(_t(-1, -2), _t(-1), _t(-1, -2), _t(-1, -2)), "policy_rejected_logps"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1, -2), _t(-1)), "ref_chosen_logps"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(float("nan"))), "ref_rejected_logps"),
        (lambda: dpo_loss(_t(float("-inf")), _t(-1), _t(-1), _t(-1)), "policy_chosen_logps"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), beta=0.0), "beta"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), beta=-0.1), "beta"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), beta=float("nan")), "beta"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), label_smoothing=0.5), "label_smoothing"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), label_smoothing=-0.01), "label_smoothing"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), label_smoothing=0.1, loss_type="ipo"),
         "label_smoothing"),
        (lambda: dpo_loss(_t(-1), _t(-1), _t(-1), _t(-1), loss_type="hinge"), "loss_type"),
        (lambda: orpo_odds_ratio_loss(_t(-1, -2), _t(-1)), "rejected_avg_logps"),
        (lambda: orpo_odds_ratio_loss(_t(float("nan")), _t(-1)), "chosen_avg_logps"),
        (lambda: orpo_odds_ratio_loss(_t(0.1), _t(-1)), "chosen_avg_logps"),
        (lambda: orpo_odds_ratio_loss(_t(-1), _t(1e-3)), "rejected_avg_logps"),
        (lambda: orpo_odds_ratio_loss(_t(-1), _t(-1), beta=0), "beta"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_non_tensor_or_integer_inputs_raise_type_error():
    with pytest.raises(TypeError, match="chosen_rewards"):
        bradley_terry_loss([1.0], _t(1))
    with pytest.raises(TypeError, match="policy_chosen_logps"):
        dpo_loss(torch.tensor([1]), _t(-1), _t(-1), _t(-1))
