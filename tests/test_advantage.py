"""Property tests for ppolab.advantage against the loop references in _reference.py."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _reference as ref
from _reference import JUNK, assert_matches, batches, pad_columns, unit_interval, with_junk
from ppolab.advantage import gae, masked_mean, masked_var, masked_whiten, rewards_to_go, td_errors

# --- agreement with the references ---------------------------------------------------------


@given(batches(n=2), unit_interval)
def test_td_errors_matches_reference(batch, gamma):
    r, v = batch.xs
    out = td_errors(r, v, batch.mask, gamma)
    assert out.dtype == batch.dtype and out.shape == r.shape
    assert_matches(out, ref.td_errors(r.tolist(), v.tolist(), batch.mask.tolist(), gamma), batch.dtype)


@given(batches(n=2), unit_interval, unit_interval)
def test_gae_matches_reference(batch, gamma, lam):
    r, v = batch.xs
    adv, ret = gae(r, v, batch.mask, gamma, lam)
    exp_adv, exp_ret = ref.gae(r.tolist(), v.tolist(), batch.mask.tolist(), gamma, lam)
    assert_matches(adv, exp_adv, batch.dtype, scale=10)
    assert_matches(ret, exp_ret, batch.dtype, scale=10)


@given(batches(n=1), unit_interval)
def test_rewards_to_go_matches_reference(batch, gamma):
    (r,) = batch.xs
    out = rewards_to_go(r, batch.mask, gamma)
    assert_matches(out, ref.rewards_to_go(r.tolist(), batch.mask.tolist(), gamma), batch.dtype, scale=10)


# --- identities ------------------------------------------------------------------------------


@given(batches(n=2), unit_interval)
def test_gae_identities(batch, gamma):
    r, v = batch.xs
    m = batch.bool_mask
    adv1, ret1 = gae(r, v, batch.mask, gamma, 1.0)
    rtg_minus_v = torch.where(m, rewards_to_go(r, batch.mask, gamma) - v, 0.0)
    torch.testing.assert_close(adv1, rtg_minus_v, rtol=1e-4, atol=1e-4)
    adv0, ret0 = gae(r, v, batch.mask, gamma, 0.0)
    torch.testing.assert_close(adv0, td_errors(r, v, batch.mask, gamma))
    for adv, ret in [(adv0, ret0), (adv1, ret1)]:
        torch.testing.assert_close(ret, torch.where(m, adv + v, 0.0))


def test_gae_hand_calculation():
    # One row of 2 valid tokens, gamma = 0.5, lam = 0.5:
    # delta_1 = 2 + 0 - 1 = 1; delta_0 = 1 + 0.5 * 1 - 3 = -1.5; A_0 = -1.5 + 0.25 * 1 = -1.25.
    r = torch.tensor([[1.0, 2.0, 7.0]])
    v = torch.tensor([[3.0, 1.0, 9.0]])
    adv, ret = gae(r, v, torch.tensor([[1, 1, 0]]), 0.5, 0.5)
    assert adv.tolist() == [[-1.25, 1.0, 0.0]]
    assert ret.tolist() == [[1.75, 2.0, 0.0]]


# --- padding and batch invariance -------------------------------------------------------------


def _all_outputs(r, v, mask, gamma, lam):
    return [td_errors(r, v, mask, gamma), *gae(r, v, mask, gamma, lam), rewards_to_go(r, mask, gamma)]


@given(batches(n=2), unit_interval, unit_interval, st.sampled_from(JUNK), st.integers(1, 3))
def test_padding_is_never_read(batch, gamma, lam, junk, extra):
    r, v = batch.xs
    base = _all_outputs(r, v, batch.mask, gamma, lam)
    junked = _all_outputs(with_junk(r, batch.mask, junk), with_junk(v, batch.mask, junk), batch.mask, gamma, lam)
    for a, b in zip(base, junked):
        assert torch.equal(a, b)  # padding outputs included: 0 in both
    wider = _all_outputs(
        pad_columns(r, extra, junk), pad_columns(v, extra, junk), pad_columns(batch.mask, extra, 0), gamma, lam
    )
    for a, b in zip(base, wider):
        torch.testing.assert_close(b[:, : a.shape[1]], a)
        assert (b[:, a.shape[1] :] == 0).all()


@given(batches(n=2), unit_interval, unit_interval)
def test_rows_are_independent(batch, gamma, lam):
    r, v = batch.xs
    full = _all_outputs(r, v, batch.mask, gamma, lam)
    for i, length in enumerate(batch.bool_mask.sum(1).tolist()):
        row = _all_outputs(r[i : i + 1, :length], v[i : i + 1, :length], batch.mask[i : i + 1, :length], gamma, lam)
        for a, b in zip(full, row):
            torch.testing.assert_close(a[i : i + 1, :length], b)


# --- masked statistics --------------------------------------------------------------------------


@given(batches(n=1, scale=5.0))
def test_masked_mean_matches_reference(batch):
    (x,) = batch.xs
    m = batch.mask.tolist()
    assert masked_mean(x, batch.mask).shape == ()
    assert_matches(masked_mean(x, batch.mask), ref.masked_mean(x.tolist(), m), batch.dtype, scale=5)
    assert_matches(masked_mean(x, batch.mask, dim=1), ref.masked_row_means(x.tolist(), m), batch.dtype, scale=5)
    cols = masked_mean(x, batch.mask, dim=0)
    for t in range(x.shape[1]):
        rows = [b for b in range(x.shape[0]) if m[b][t]]
        if rows:
            assert_matches(cols[t], sum(x[b, t].item() for b in rows) / len(rows), batch.dtype, scale=5)
        else:
            assert math.isnan(cols[t].item())  # documented: no valid token in that column


@given(batches(n=1, scale=5.0), st.booleans())
def test_masked_var_matches_reference(batch, unbiased):
    (x,) = batch.xs
    out = masked_var(x, batch.mask, unbiased=unbiased)
    assert_matches(out, ref.masked_var(x.tolist(), batch.mask.tolist(), unbiased), batch.dtype, scale=25)


@given(batches(n=1, scale=5.0), st.booleans())
def test_masked_whiten_matches_reference(batch, shift_mean):
    (x,) = batch.xs
    out = masked_whiten(x, batch.mask, shift_mean=shift_mean)
    expected = ref.masked_whiten(x.tolist(), batch.mask.tolist(), shift_mean)
    assert_matches(out, expected, batch.dtype, scale=10)


@given(batches(n=1, scale=5.0))
def test_whitening_depends_only_on_the_valid_values(batch):
    # Whitening the batch equals whitening all valid tokens laid out as one row:
    # rows interact only through the batch mean and variance.
    (x,) = batch.xs
    m = batch.bool_mask
    out = masked_whiten(x, batch.mask)
    flat = x[m][None, :]
    torch.testing.assert_close(out[m][None, :], masked_whiten(flat, torch.ones_like(flat, dtype=torch.bool)))
    if m.sum() > 1:
        assert abs(masked_mean(out, m).item()) < 1e-4
        assert abs(masked_var(out, m).item() - 1.0) < 1e-3 or masked_var(x, m).item() < 1e-6


@given(batches(n=1, scale=5.0), st.sampled_from(JUNK), st.integers(1, 3))
def test_statistics_never_read_padding(batch, junk, extra):
    (x,) = batch.xs
    junked = with_junk(x, batch.mask, junk)
    wide_x, wide_m = pad_columns(x, extra, junk), pad_columns(batch.mask, extra, 0)
    for fn in [masked_mean, masked_var, lambda x, m: masked_mean(x, m, dim=1), masked_whiten]:
        base = fn(x, batch.mask)
        assert torch.equal(fn(junked, batch.mask), base)
        torch.testing.assert_close(fn(wide_x, wide_m)[..., : base.shape[-1]] if base.dim() else fn(wide_x, wide_m), base)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_single_token_whitens_to_zero_not_nan(dtype):
    x = torch.tensor([[3.5, float("nan")]], dtype=dtype)
    mask = torch.tensor([[1, 0]])
    assert masked_var(x, mask).item() == 0.0
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0]]
    assert masked_whiten(x, mask, shift_mean=False).tolist() == [[3.5, 0.0]]
    assert masked_whiten(x, mask).dtype == dtype


def test_low_precision_counts_are_exact():
    # float16 cannot represent 2049; the token count must not be taken in float16.
    x = torch.ones(1, 2049, dtype=torch.float16)
    assert masked_mean(x, torch.ones(1, 2049)).item() == 1.0


# --- bad inputs -----------------------------------------------------------------------------------

R = torch.zeros(2, 3)
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("gamma", [-0.1, 1.1, float("nan")])
def test_bad_gamma(gamma):
    for call in [lambda: td_errors(R, R, M, gamma), lambda: gae(R, R, M, gamma, 0.9), lambda: rewards_to_go(R, M, gamma)]:
        with pytest.raises(ValueError, match="gamma"):
            call()


@pytest.mark.parametrize("lam", [-0.1, 1.1, float("nan")])
def test_bad_lam(lam):
    with pytest.raises(ValueError, match="lam"):
        gae(R, R, M, 0.9, lam)


def test_bad_shapes():
    with pytest.raises(ValueError, match="values"):
        gae(R, torch.zeros(2, 4), M, 1.0, 1.0)
    with pytest.raises(ValueError, match="mask"):
        td_errors(R, R, M[:, :2], 1.0)
    with pytest.raises(ValueError, match="mask must be 2-D"):
        rewards_to_go(R[0], M[0], 1.0)
    with pytest.raises(ValueError, match="x"):
        masked_whiten(torch.zeros(3, 3), M)


@pytest.mark.parametrize(
    "mask, message",
    [
        ([[1, 1, 0], [0, 0, 0]], "mask row 1 has no valid token"),
        ([[1, 0, 1], [1, 0, 0]], "mask row 0 is not ones-then-zeros"),
        ([[1, 2, 0], [1, 0, 0]], "mask must contain only 0 and 1"),
    ],
)
def test_bad_masks(mask, message):
    mask = torch.tensor(mask)
    for call in [
        lambda: gae(R, R, mask, 1.0, 1.0),
        lambda: td_errors(R, R, mask, 1.0),
        lambda: rewards_to_go(R, mask, 1.0),
        lambda: masked_mean(R, mask),
        lambda: masked_var(R, mask),
        lambda: masked_whiten(R, mask),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_on_valid_positions(bad):
    x = R.clone()
    x[1, 0] = bad
    with pytest.raises(ValueError, match=r"rewards .*\(1, 0\)"):
        gae(x, R, M, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"values .*\(1, 0\)"):
        gae(R, x, M, 1.0, 1.0)
    with pytest.raises(ValueError, match="rewards"):
        rewards_to_go(x, M, 1.0)


@pytest.mark.parametrize("eps", [0.0, -1e-8, float("nan")])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        masked_whiten(R, M, eps=eps)


def test_integer_inputs_rejected():
    with pytest.raises(ValueError, match="rewards"):
        rewards_to_go(torch.zeros(2, 3, dtype=torch.long), M, 1.0)
