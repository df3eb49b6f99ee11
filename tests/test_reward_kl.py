"""Property tests for ppolab.reward_kl against the loop references in _reference.py."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _reference as ref
from _reference import JUNK, assert_matches, batches, pad_columns, with_junk
from ppolab.reward_kl import AdaptiveKLController, FixedKLController, kl_penalized_rewards, per_token_kl

estimators = st.sampled_from(["k1", "k2", "k3"])


def _scores_and_eos(batch, seed):
    gen = torch.Generator().manual_seed(seed)
    b = batch.mask.shape[0]
    scores = torch.randn(b, generator=gen, dtype=torch.float64).to(batch.dtype)
    has_eos = torch.rand(b, generator=gen) < 0.5
    return scores, has_eos


# --- per_token_kl --------------------------------------------------------------------------------


@given(batches(n=2), estimators)
def test_per_token_kl_matches_reference(batch, estimator):
    logp, ref_logp = batch.xs
    out = per_token_kl(logp, ref_logp, batch.mask, estimator)
    assert out.dtype == batch.dtype and out.shape == logp.shape
    expected = ref.per_token_kl(logp.tolist(), ref_logp.tolist(), batch.mask.tolist(), estimator)
    assert_matches(out, expected, batch.dtype, scale=10)


@given(batches(n=2, scale=3.0))
def test_kl_estimator_signs_and_zeros(batch):
    logp, ref_logp = batch.xs
    m = batch.mask
    assert (per_token_kl(logp, ref_logp, m, "k2") >= 0).all()
    assert (per_token_kl(logp, ref_logp, m, "k3") >= 0).all()
    for est in ["k1", "k2", "k3"]:
        assert (per_token_kl(logp, logp, m, est) == 0).all()


def test_k3_is_nonnegative_for_tiny_log_ratios():
    # exp(r) - 1 - r cancels catastrophically for tiny r; the result must still be >= 0.
    logp = torch.zeros(1, 6)
    ref_logp = torch.tensor([[1e-8, -1e-8, 1e-4, -1e-4, 3e-3, -3e-3]])
    out = per_token_kl(logp, ref_logp, torch.ones(1, 6), "k3")
    assert (out >= 0).all()
    torch.testing.assert_close(out, 0.5 * ref_logp**2, rtol=1e-2, atol=1e-12)  # k3 ~ r^2 / 2


@given(batches(n=2), estimators, st.sampled_from(JUNK), st.integers(1, 3))
def test_per_token_kl_never_reads_padding(batch, estimator, junk, extra):
    logp, ref_logp = batch.xs
    m = batch.mask
    base = per_token_kl(logp, ref_logp, m, estimator)
    assert torch.equal(per_token_kl(with_junk(logp, m, junk), with_junk(ref_logp, m, -junk), m, estimator), base)
    wide = per_token_kl(pad_columns(logp, extra, junk), pad_columns(ref_logp, extra, junk), pad_columns(m, extra, 0), estimator)
    assert torch.equal(wide[:, : base.shape[1]], base) and (wide[:, base.shape[1] :] == 0).all()


@given(batches(n=2), estimators)
def test_per_token_kl_rows_are_independent(batch, estimator):
    logp, ref_logp = batch.xs
    full = per_token_kl(logp, ref_logp, batch.mask, estimator)
    for i in range(logp.shape[0]):
        row = per_token_kl(logp[i : i + 1], ref_logp[i : i + 1], batch.mask[i : i + 1], estimator)
        assert torch.equal(full[i : i + 1], row)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_per_token_kl_gradient(estimator):
    logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert torch.autograd.gradcheck(lambda a, b: per_token_kl(a, b, mask, estimator), (logp, ref_logp))
    # Junk on padding must not leak NaN into gradients.
    junk_logp = with_junk(logp.detach(), mask, float("nan")).requires_grad_()
    per_token_kl(junk_logp, ref_logp.detach(), mask, estimator).sum().backward()
    assert torch.isfinite(junk_logp.grad).all() and (junk_logp.grad[mask == 0] == 0).all()


# --- kl_penalized_rewards ------------------------------------------------------------------------


@given(batches(n=1), st.floats(0.0, 2.0), st.integers(0, 2**31), st.one_of(st.none(), st.floats(0.0, 5.0)))
def test_kl_penalized_rewards_matches_reference(batch, kl_coef, seed, penalty):
    (kl,) = batch.xs
    scores, has_eos = _scores_and_eos(batch, seed)
    out = kl_penalized_rewards(scores, kl, batch.mask, kl_coef, missing_eos_penalty=penalty, has_eos=has_eos)
    assert out.dtype == batch.dtype and out.shape == kl.shape
    expected = ref.kl_penalized_rewards(
        scores.tolist(), kl.tolist(), batch.mask.tolist(), kl_coef, penalty, has_eos.tolist()
    )
    assert_matches(out, expected, batch.dtype, scale=10)


@given(batches(n=1), st.floats(0.0, 2.0), st.integers(0, 2**31), st.sampled_from(JUNK), st.integers(1, 3))
def test_kl_penalized_rewards_never_reads_padding(batch, kl_coef, seed, junk, extra):
    (kl,) = batch.xs
    m = batch.mask
    scores, _ = _scores_and_eos(batch, seed)
    base = kl_penalized_rewards(scores, kl, m, kl_coef)
    assert torch.equal(kl_penalized_rewards(scores, with_junk(kl, m, junk), m, kl_coef), base)
    wide = kl_penalized_rewards(scores, pad_columns(kl, extra, junk), pad_columns(m, extra, 0), kl_coef)
    assert torch.equal(wide[:, : base.shape[1]], base) and (wide[:, base.shape[1] :] == 0).all()


@given(batches(n=1), st.integers(0, 2**31))
def test_kl_penalized_rewards_rows_are_independent_and_sum_up(batch, seed):
    (kl,) = batch.xs
    scores, _ = _scores_and_eos(batch, seed)
    out = kl_penalized_rewards(scores, kl, batch.mask, 0.3)
    for i in range(kl.shape[0]):
        assert torch.equal(out[i : i + 1], kl_penalized_rewards(scores[i : i + 1], kl[i : i + 1], batch.mask[i : i + 1], 0.3))
    # Summed over a row: score minus the total KL penalty.
    total_kl = torch.where(batch.bool_mask, kl, 0.0).sum(1)
    torch.testing.assert_close(out.sum(1), scores - 0.3 * total_kl, rtol=1e-4, atol=1e-4)


def test_score_lands_on_last_valid_token():
    kl = torch.zeros(2, 3)
    out = kl_penalized_rewards(torch.tensor([5.0, -2.0]), kl, torch.tensor([[1, 1, 0], [1, 1, 1]]), 0.1)
    assert out.tolist() == [[0.0, 5.0, 0.0], [0.0, 0.0, -2.0]]
    out = kl_penalized_rewards(
        torch.tensor([5.0, -2.0]), kl, torch.ones(2, 3), 0.1, missing_eos_penalty=1.5, has_eos=torch.tensor([True, False])
    )
    assert out[:, -1].tolist() == [5.0, -3.5]


def test_kl_penalized_rewards_bad_inputs():
    kl, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"scores .*row 1"):
        kl_penalized_rewards(torch.tensor([0.0, float("nan")]), kl, mask, 0.1)
    with pytest.raises(ValueError, match="scores"):
        kl_penalized_rewards(torch.zeros(3), kl, mask, 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_penalized_rewards(torch.zeros(2), kl, mask, -0.1)
    with pytest.raises(ValueError, match="has_eos"):
        kl_penalized_rewards(torch.zeros(2), kl, mask, 0.1, missing_eos_penalty=1.0)
    with pytest.raises(ValueError, match="has_eos"):
        kl_penalized_rewards(torch.zeros(2), kl, mask, 0.1, missing_eos_penalty=1.0, has_eos=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="missing_eos_penalty"):
        kl_penalized_rewards(torch.zeros(2), kl, mask, 0.1, missing_eos_penalty=-1.0, has_eos=torch.ones(2, dtype=torch.bool))
    bad_kl = kl.clone()
    bad_kl[0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"kl .*\(0, 2\)"):
        kl_penalized_rewards(torch.zeros(2), bad_kl, mask, 0.1)
    with pytest.raises(ValueError, match="mask row 0 has no valid token"):
        kl_penalized_rewards(torch.zeros(2), kl, torch.tensor([[0, 0, 0], [1, 1, 1]]), 0.1)


def test_per_token_kl_bad_inputs():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="estimator"):
        per_token_kl(x, x, mask, "k4")
    with pytest.raises(ValueError, match="ref_logprobs"):
        per_token_kl(x, torch.zeros(2, 4), mask)
    for name in ["logprobs", "ref_logprobs"]:
        bad = x.clone()
        bad[1, 1] = float("nan")
        args = {"logprobs": x, "ref_logprobs": x, name: bad}
        with pytest.raises(ValueError, match=rf"^{name} .*\(1, 1\)"):
            per_token_kl(**args, mask=mask)
    with pytest.raises(ValueError, match="mask row 1 is not ones-then-zeros"):
        per_token_kl(x, x, torch.tensor([[1, 1, 1], [0, 1, 1]]))


# --- controllers -----------------------------------------------------------------------------------


def test_adaptive_controller_hand_calculation():
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=8.0, n_steps=256)  # 8/6 - 1 = 0.33 -> clipped to 0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    ctl.update(current_kl=5.4, n_steps=100)  # 5.4/6 - 1 = -0.1, not clipped
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    ctl.update(current_kl=torch.tensor(0.0), n_steps=1000)  # -1 -> clipped to -0.2; tensors accepted
    assert ctl.value == pytest.approx(0.2 * 1.00512 * 0.999 * 0.98)


@given(
    st.floats(0.01, 1.0),
    st.floats(0.1, 10.0),
    st.floats(100, 1e5),
    st.lists(st.tuples(st.floats(-1.0, 30.0), st.integers(0, 512)), max_size=8),
)
def test_adaptive_controller_matches_reference(init, target, horizon, updates):
    ctl = AdaptiveKLController(init, target, horizon)
    for (kl, n), expected in zip(updates, ref.adaptive_kl(init, target, horizon, updates)):
        ctl.update(kl, n)
        assert ctl.value == pytest.approx(expected, rel=1e-12)


def test_fixed_controller_is_constant():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05


def test_controller_bad_inputs():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 100)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 1.0, -5)
    with pytest.raises(ValueError, match="init_coef"):
        AdaptiveKLController(float("nan"), 1.0, 100)
    with pytest.raises(ValueError, match="coef"):
        FixedKLController(-1.0)
    ctl = AdaptiveKLController(0.1, 1.0, 100)
    with pytest.raises(ValueError, match="current_kl"):
        ctl.update(math.nan, 10)
    with pytest.raises(ValueError, match="n_steps"):
        ctl.update(0.0, 600)  # multiplier 1 - 0.2 * 6 < 0
    assert ctl.value == 0.1  # a rejected update changes nothing
