"""Property tests for ppolab.ppo losses against the loop references in _reference.py."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _reference as ref
from _reference import JUNK, assert_matches, batches, pad_columns, with_junk
from ppolab.advantage import masked_mean
from ppolab.ppo import clipped_policy_loss, clipped_value_loss, entropy_from_logits, policy_ratio

clip_eps = st.floats(0.01, 0.5)


def _logits(batch, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = batch.mask.shape
    return (3 * torch.randn(b, t, vocab, generator=gen, dtype=torch.float64)).to(batch.dtype)


# --- policy loss -------------------------------------------------------------------------------------


@given(batches(n=3, scale=0.3), clip_eps)
def test_policy_loss_matches_reference_values_and_gradient(batch, eps):
    logp, old, adv = batch.xs
    adv = adv * 10  # advantages at a different scale than log-ratios
    logp = logp.clone().requires_grad_()
    loss, stats = clipped_policy_loss(logp, old, adv, batch.mask, eps)
    loss.backward()
    exp_loss, exp_clipfrac, exp_kl, exp_ratio, exp_grad = ref.clipped_policy_loss(
        logp.tolist(), old.tolist(), adv.tolist(), batch.mask.tolist(), eps
    )
    assert loss.shape == () and loss.dtype == batch.dtype
    assert_matches(loss, exp_loss, batch.dtype, scale=10)
    assert_matches(stats["clipfrac"], exp_clipfrac, batch.dtype)
    assert_matches(stats["approx_kl"], exp_kl, batch.dtype)
    assert_matches(stats["ratio_mean"], exp_ratio, batch.dtype)
    # Zero gradient exactly on tokens clipped in the advantage's favour, -A * ratio / N elsewhere.
    assert_matches(logp.grad, exp_grad, batch.dtype, scale=10)
    assert all(s.shape == () and not s.requires_grad for s in stats.values())


@given(batches(n=2), clip_eps)
def test_policy_loss_at_ratio_one(batch, eps):
    logp, adv = batch.xs
    loss, stats = clipped_policy_loss(logp, logp.clone(), adv, batch.mask, eps)
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    torch.testing.assert_close(loss, -masked_mean(adv, batch.mask))


def test_policy_gradient_zero_on_favourably_clipped_tokens():
    eps = 0.2
    # ratio = e^0.5 > 1.2 and e^-0.5 < 0.8.
    logp = torch.tensor([[0.5, 0.5, -0.5, -0.5, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0]])
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 5), adv, torch.ones(1, 5), eps)
    loss.backward()
    r_hi, r_lo = torch.tensor(0.5).exp().item(), torch.tensor(-0.5).exp().item()
    # token 0: A > 0, ratio above 1 + eps -> flat; token 3: A < 0, ratio below 1 - eps -> flat.
    # tokens 1, 2: clipping works against the objective, the unclipped term and its gradient stay.
    expected = [0.0, r_hi / 5, -r_lo / 5, 0.0, -2.0 / 5]
    torch.testing.assert_close(logp.grad, torch.tensor([expected]))
    assert stats["clipfrac"].item() == pytest.approx(4 / 5)


@given(batches(n=3, scale=0.3), clip_eps, st.sampled_from(JUNK), st.integers(1, 3))
def test_policy_loss_never_reads_padding(batch, eps, junk, extra):
    logp, old, adv = batch.xs
    m = batch.mask
    base_loss, base_stats = clipped_policy_loss(logp, old, adv, m, eps)
    junk_logp = with_junk(logp, m, junk).requires_grad_()
    loss, stats = clipped_policy_loss(junk_logp, with_junk(old, m, -junk), with_junk(adv, m, junk), m, eps)
    assert torch.equal(loss, base_loss) and all(torch.equal(stats[k], base_stats[k]) for k in stats)
    loss.backward()
    assert torch.isfinite(junk_logp.grad).all() and (junk_logp.grad[~batch.bool_mask] == 0).all()
    wide = [pad_columns(x, extra, junk) for x in (logp, old, adv)]
    loss, stats = clipped_policy_loss(*wide, pad_columns(m, extra, 0), eps)
    torch.testing.assert_close(loss, base_loss)
    for k in stats:
        torch.testing.assert_close(stats[k], base_stats[k])


@given(batches(n=2, scale=0.5))
def test_policy_ratio(batch):
    logp, old = batch.xs
    ratio = policy_ratio(logp, old)
    expected = [[float(torch.tensor(a - b, dtype=torch.float64).exp()) for a, b in zip(r1, r2)] for r1, r2 in zip(logp.tolist(), old.tolist())]
    assert_matches(ratio, expected, batch.dtype)


# --- value loss ----------------------------------------------------------------------------------------


@given(batches(n=3), clip_eps)
def test_value_loss_matches_reference(batch, eps):
    v, old, ret = batch.xs
    loss, stats = clipped_value_loss(v, old, ret, batch.mask, eps)
    exp_loss, exp_clipfrac = ref.clipped_value_loss(v.tolist(), old.tolist(), ret.tolist(), batch.mask.tolist(), eps)
    assert loss.shape == () and loss.dtype == batch.dtype
    assert_matches(loss, exp_loss, batch.dtype, scale=10)
    assert_matches(stats["value_clipfrac"], exp_clipfrac, batch.dtype)
    assert not stats["value_clipfrac"].requires_grad


@given(batches(n=2), clip_eps)
def test_value_loss_unclipped_is_half_mse(batch, eps):
    # With V = V_old nothing is clipped: the loss is 0.5 * masked MSE and its gradient (V - R) / N.
    v, ret = batch.xs
    v = v.clone().requires_grad_()
    loss, stats = clipped_value_loss(v, v.detach(), ret, batch.mask, eps)
    loss.backward()
    torch.testing.assert_close(loss, 0.5 * masked_mean((v.detach() - ret) ** 2, batch.mask))
    n = batch.bool_mask.sum()
    torch.testing.assert_close(v.grad, torch.where(batch.bool_mask, (v.detach() - ret) / n, 0.0))
    assert stats["value_clipfrac"].item() == 0.0


def test_value_gradient_zero_when_clipped_prediction_is_worse():
    # Return R = 0, eps = 0.2. Token 0 moved away from R past the clip range: the unclipped
    # error is the larger one, so the gradient (V - R) / N stays. Token 1 moved towards R past
    # the clip range: the clipped error is larger and is constant in V, so the gradient is 0.
    v = torch.tensor([[2.0, 0.5]], requires_grad=True)
    old = torch.tensor([[1.0, 1.5]])
    loss, stats = clipped_value_loss(v, old, torch.zeros(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    assert v.grad.tolist() == [[2.0 / 2, 0.0]]
    assert loss.item() == pytest.approx(0.5 * (4.0 + 1.3**2) / 2)
    assert stats["value_clipfrac"].item() == 1.0


@given(batches(n=3), clip_eps, st.sampled_from(JUNK))
def test_value_loss_never_reads_padding(batch, eps, junk):
    v, old, ret = batch.xs
    m = batch.mask
    base_loss, base_stats = clipped_value_loss(v, old, ret, m, eps)
    junk_v = with_junk(v, m, junk).requires_grad_()
    loss, stats = clipped_value_loss(junk_v, with_junk(old, m, junk), with_junk(ret, m, -junk), m, eps)
    assert torch.equal(loss, base_loss) and torch.equal(stats["value_clipfrac"], base_stats["value_clipfrac"])
    loss.backward()
    assert torch.isfinite(junk_v.grad).all() and (junk_v.grad[~batch.bool_mask] == 0).all()


def test_rollout_quantities_are_detached():
    x = torch.randn(2, 3, dtype=torch.float64)
    old, adv = x.clone().requires_grad_(), x.clone().requires_grad_()
    logp = (x + 0.1).requires_grad_()
    loss, _ = clipped_policy_loss(logp, old, adv, torch.ones(2, 3), 0.2)
    loss.backward()
    assert old.grad is None and adv.grad is None and logp.grad is not None
    ret = x.clone().requires_grad_()
    v = (x + 0.1).requires_grad_()
    loss, _ = clipped_value_loss(v, old, ret, torch.ones(2, 3), 0.2)
    loss.backward()
    assert ret.grad is None and v.grad is not None


# --- entropy -------------------------------------------------------------------------------------------


@given(batches(n=0), st.integers(1, 7), st.integers(0, 2**31))
def test_entropy_matches_reference(batch, vocab, seed):
    logits = _logits(batch, vocab, seed)
    out = entropy_from_logits(logits, batch.mask)
    assert out.shape == batch.mask.shape and out.dtype == batch.dtype
    assert_matches(out, ref.entropy_from_logits(logits.tolist(), batch.mask.tolist()), batch.dtype)
    assert (out >= -1e-6).all() and (out <= torch.log(torch.tensor(float(vocab))) + 1e-5).all()


@given(batches(n=0), st.integers(2, 7), st.integers(0, 2**31), st.sampled_from(JUNK), st.integers(1, 2))
def test_entropy_never_reads_padding(batch, vocab, seed, junk, extra):
    logits = _logits(batch, vocab, seed)
    m = batch.mask
    base = entropy_from_logits(logits, m)
    junked = torch.where(batch.bool_mask[..., None], logits, junk).requires_grad_()
    out = entropy_from_logits(junked, m)
    assert torch.equal(out, base)
    out.sum().backward()
    assert torch.isfinite(junked.grad).all() and (junked.grad[~batch.bool_mask] == 0).all()
    wide = entropy_from_logits(pad_columns(logits, extra, junk), pad_columns(m, extra, 0))
    assert torch.equal(wide[:, : base.shape[1]], base)


def test_entropy_stable_and_handles_neg_inf_logits():
    logits = torch.tensor([[[1e4, 1e4, -float("inf"), -float("inf")], [0.0, -float("inf"), -float("inf"), -float("inf")]]])
    logits.requires_grad_()
    out = entropy_from_logits(logits, torch.ones(1, 2))
    torch.testing.assert_close(out, torch.tensor([[torch.log(torch.tensor(2.0)).item(), 0.0]]))
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_entropy_gradcheck():
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, mask), (logits,))


# --- bad inputs ----------------------------------------------------------------------------------------

X, M = torch.zeros(2, 3), torch.tensor([[1, 1, 0], [1, 1, 1]])


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_clip_eps(eps):
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_policy_loss(X, X, X, M, eps)
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_value_loss(X, X, X, M, eps)


@pytest.mark.parametrize("name", ["logprobs", "old_logprobs", "advantages"])
def test_policy_loss_non_finite_and_shapes(name):
    bad = X.clone()
    bad[1, 2] = float("nan")
    args = {"logprobs": X, "old_logprobs": X, "advantages": X, name: bad}
    with pytest.raises(ValueError, match=rf"^{name} .*\(1, 2\)"):
        clipped_policy_loss(**args, mask=M, clip_eps=0.2)
    args[name] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=name):
        clipped_policy_loss(**args, mask=M, clip_eps=0.2)


@pytest.mark.parametrize("name", ["values", "old_values", "returns"])
def test_value_loss_non_finite_and_shapes(name):
    bad = X.clone()
    bad[0, 1] = float("inf")
    args = {"values": X, "old_values": X, "returns": X, name: bad}
    with pytest.raises(ValueError, match=rf"^{name} .*\(0, 1\)"):
        clipped_value_loss(**args, mask=M, clip_eps=0.2)
    args[name] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=name):
        clipped_value_loss(**args, mask=M, clip_eps=0.2)


def test_bad_masks_and_logits():
    with pytest.raises(ValueError, match="mask row 0 has no valid token"):
        clipped_policy_loss(X, X, X, torch.tensor([[0, 0, 0], [1, 0, 0]]), 0.2)
    with pytest.raises(ValueError, match="mask row 1 is not ones-then-zeros"):
        clipped_value_loss(X, X, X, torch.tensor([[1, 0, 0], [1, 0, 1]]), 0.2)
    with pytest.raises(ValueError, match="logits"):
        entropy_from_logits(torch.zeros(2, 4, 5), M)
    with pytest.raises(ValueError, match="logits"):
        entropy_from_logits(torch.zeros(2, 3), M)
    bad = torch.zeros(2, 3, 5)
    bad[1, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"logits .*\(1, 1, 3\)"):
        entropy_from_logits(bad, M)
    bad[1, 1] = -float("inf")
    with pytest.raises(ValueError, match=r"logits are all -inf .*\(1, 1\)"):
        entropy_from_logits(bad, M)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_ratio(X, torch.zeros(3, 3))
