"""Property tests for the critic-free estimators, loss aggregation, clip variants and the KL loss,
against the loop references in _reference.py."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _reference as ref
from _reference import JUNK, assert_matches, batches, pad_columns, with_junk
from ppolab.advantage import expand_to_tokens, group_advantages, rloo_advantages
from ppolab.advantage.aggregate import aggregation_units
from ppolab.ppo import AGGREGATIONS, aggregate_loss, clipped_policy_loss
from ppolab.reward_kl import kl_loss

modes = st.sampled_from(AGGREGATIONS)
estimators = st.sampled_from(["k1", "k2", "k3"])


@st.composite
def grouped_scores(draw, min_group=1):
    """``[n_groups * group_size]`` scores; some groups identical, some with one outlier."""
    group_size = draw(st.integers(min_group, 6))
    n_groups = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    groups = []
    for _ in range(n_groups):
        kind = draw(st.sampled_from(["random", "identical", "one_apart"]))
        g = 3 * torch.randn(group_size, generator=gen, dtype=torch.float64)
        if kind != "random":
            g = torch.full_like(g, float(g[0]))
            if kind == "one_apart":
                g[-1] += 1.0
        groups.append(g)
    return torch.cat(groups).to(dtype), group_size


# --- group_advantages, rloo_advantages, expand_to_tokens ---------------------------------------------


@given(grouped_scores(min_group=2), st.sampled_from(["std", "none"]), st.sampled_from([1e-6, 1e-2]))
def test_group_advantages_match_reference(data, scale, eps):
    scores, g = data
    out = group_advantages(scores, g, scale=scale, eps=eps)
    assert out.shape == scores.shape and out.dtype == scores.dtype
    assert_matches(out, ref.group_advantages(scores.tolist(), g, scale, eps), scores.dtype, scale=10)


@given(grouped_scores(min_group=1))
def test_dr_grpo_allows_groups_of_one_and_centres_each_group(data):
    scores, g = data
    out = group_advantages(scores, g, scale="none")
    assert_matches(out, ref.group_advantages(scores.tolist(), g, "none"), scores.dtype, scale=10)
    assert_matches(out.view(-1, g).sum(1), [0.0] * (len(scores) // g), scores.dtype, scale=10 * g)


@given(grouped_scores(min_group=2))
def test_rloo_advantages_match_reference(data):
    scores, g = data
    out = rloo_advantages(scores, g)
    assert out.shape == scores.shape and out.dtype == scores.dtype
    assert_matches(out, ref.rloo_advantages(scores.tolist(), g), scores.dtype, scale=10)


@pytest.mark.parametrize("fn", [
    lambda s, g: group_advantages(s, g), lambda s, g: group_advantages(s, g, scale="none"), rloo_advantages,
])
@pytest.mark.parametrize("value", [0.0, 0.1, -7.5, 6e4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_identical_scores_give_zero_advantage_not_nan(fn, value, dtype):
    scores = torch.full((9,), value, dtype=dtype)  # groups of 3: the mean of three 0.1s is not 0.1
    out = fn(scores, 3)
    assert out.dtype == dtype and torch.equal(out, torch.zeros_like(out))


@given(grouped_scores(min_group=2), st.integers(0, 2**31))
def test_groups_are_independent_of_each_other(data, seed):
    """Batch invariance: a group's advantages depend on that group only, in any order of groups."""
    scores, g = data
    n = len(scores) // g
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = scores.view(n, g)[perm].reshape(-1)
    for fn in (group_advantages, rloo_advantages):
        full = fn(scores, g).view(n, g)  # equal up to the reduction order of differently shaped batches
        torch.testing.assert_close(fn(shuffled, g).view(n, g), full[perm])
        for i in range(n):
            torch.testing.assert_close(fn(scores[i * g : (i + 1) * g], g), full[i])


@given(batches(n=1), st.integers(0, 3))
def test_expand_to_tokens_matches_reference_and_ignores_padding_columns(batch, extra):
    adv = batch.xs[0][:, 0] * 5
    out = expand_to_tokens(adv, batch.mask)
    assert out.dtype == adv.dtype
    assert_matches(out, ref.expand_to_tokens(adv.tolist(), batch.mask.tolist()), batch.dtype)
    wide = expand_to_tokens(adv, pad_columns(batch.mask, extra, 0))
    assert torch.equal(wide[:, : out.shape[1]], out) and (wide[:, out.shape[1] :] == 0).all()


@pytest.mark.parametrize("call, message", [
    (lambda: group_advantages(torch.zeros(4), 1), "group_size must be an int >= 2"),
    (lambda: rloo_advantages(torch.zeros(4), 1), "group_size must be an int >= 2"),
    (lambda: group_advantages(torch.zeros(6), 4), "6 rows, not a positive multiple of group_size=4"),
    (lambda: group_advantages(torch.zeros(4), 2, scale="mad"), "scale must be one of"),
    (lambda: group_advantages(torch.zeros(4), 2, eps=0.0), "eps"),
    (lambda: group_advantages(torch.tensor([0.0, float("nan")]), 2), "non-finite value at row 1"),
    (lambda: rloo_advantages(torch.zeros(2, 2), 2), "1-D"),
    (lambda: rloo_advantages(torch.zeros(4, dtype=torch.long), 2), "floating-point"),
    (lambda: expand_to_tokens(torch.zeros(3), torch.ones(2, 4)), r"advantages must have shape \[2\]"),
])
def test_estimator_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- aggregate_loss ----------------------------------------------------------------------------------


@given(batches(n=1, scale=3.0), modes, st.one_of(st.none(), st.integers(1, 20)))
def test_aggregate_loss_matches_reference_value_and_gradient(batch, mode, norm_length):
    norm_length = norm_length if mode == "seq-mean-token-sum-norm" else None
    x = batch.xs[0].clone().requires_grad_()
    out = aggregate_loss(x, batch.mask, mode, norm_length)
    out.backward()
    m = batch.mask.tolist()
    assert out.shape == () and out.dtype == batch.dtype
    assert_matches(out, ref.aggregate(x.tolist(), m, mode, norm_length), batch.dtype, scale=10)
    assert_matches(x.grad, ref.aggregation_weights(m, mode, norm_length), batch.dtype)


@given(batches(n=1, scale=3.0), modes, st.sampled_from(JUNK), st.integers(1, 3))
def test_aggregate_loss_never_reads_padding(batch, mode, junk, extra):
    x, m = batch.xs[0], batch.mask
    length = x.shape[1] if mode == "seq-mean-token-sum-norm" else None  # fixed, so extra columns can't move it
    base = aggregate_loss(x, m, mode, length)
    junk_x = with_junk(x, m, junk).requires_grad_()
    out = aggregate_loss(junk_x, m, mode, length)
    assert torch.equal(out, base)
    out.backward()
    assert torch.isfinite(junk_x.grad).all() and (junk_x.grad[~batch.bool_mask] == 0).all()
    wide = aggregate_loss(pad_columns(x, extra, junk), pad_columns(m, extra, 0), mode, length)
    torch.testing.assert_close(wide, base)  # a wider tensor may sum in another order: not bitwise


@given(batches(n=1, scale=3.0, max_b=8), modes, st.integers(0, 2**31))
def test_micro_batches_weighted_by_their_units_make_the_whole(batch, mode, seed):
    """Gradient accumulation at the function level: split the rows anyhow, weigh each part's
    aggregate by its share of ``aggregation_units``, and the sum is the whole batch's aggregate."""
    x, m = batch.xs[0], batch.mask
    length = x.shape[1] if mode == "seq-mean-token-sum-norm" else None
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    cuts = sorted(torch.randint(1, len(x), (2,), generator=gen).tolist()) if len(x) > 1 else []
    parts = [p for p in torch.tensor_split(order, cuts) if len(p)]
    total = aggregation_units(m, mode)
    assert total == sum(aggregation_units(m[p], mode) for p in parts)
    summed = sum(aggregation_units(m[p], mode) / total * aggregate_loss(x[p], m[p], mode, length) for p in parts)
    assert_matches(summed, ref.aggregate(x.tolist(), m.tolist(), mode, length), batch.dtype, scale=10)


def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert aggregate_loss(x, m, "token-mean").item() == pytest.approx(20 / 5)
    assert aggregate_loss(x, m, "seq-mean-token-sum").item() == pytest.approx((10 + 10) / 2)
    assert aggregate_loss(x, m, "seq-mean-token-mean").item() == pytest.approx((2.5 + 10) / 2)
    assert aggregate_loss(x, m, "seq-mean-token-sum-norm").item() == pytest.approx(20 / (2 * 4))
    assert aggregate_loss(x, m, "seq-mean-token-sum-norm", norm_length=10).item() == pytest.approx(20 / (2 * 10))


@pytest.mark.parametrize("call, message", [
    (lambda: aggregate_loss(torch.zeros(2, 3), torch.ones(2, 3), "sum"), "aggregation must be one of"),
    (lambda: aggregate_loss(torch.zeros(2, 3), torch.ones(2, 3), "token-mean", 4), "norm_length applies to"),
    (lambda: aggregate_loss(torch.zeros(2, 3), torch.ones(2, 3), "seq-mean-token-sum-norm", 0), "norm_length"),
    (lambda: aggregate_loss(torch.zeros(2, 3), torch.ones(2, 4), "token-mean"), "shape mismatch"),
    (lambda: aggregate_loss(torch.zeros(2, 3), torch.tensor([[1, 0, 1], [1, 1, 1]]), "token-mean"),
     "not ones-then-zeros"),
])
def test_aggregation_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- clipped_policy_loss: clip-higher, dual clip, aggregation -------------------------------------


@given(batches(n=3, scale=0.3), st.floats(0.01, 0.5), st.one_of(st.none(), st.floats(0.01, 0.8)),
       st.one_of(st.none(), st.floats(1.01, 5.0)), modes)
def test_policy_loss_variants_match_reference(batch, eps, eps_high, dual_clip, mode):
    logp, old, adv = batch.xs
    adv = adv * 10
    logp = logp.clone().requires_grad_()
    loss, stats = clipped_policy_loss(logp, old, adv, batch.mask, eps, clip_eps_high=eps_high,
                                      dual_clip=dual_clip, aggregation=mode)
    loss.backward()
    m = batch.mask.tolist()
    per_token, slope, low, high, dual = ref.policy_loss_terms(
        logp.tolist(), old.tolist(), adv.tolist(), m, eps, eps_high, dual_clip
    )
    weights = ref.aggregation_weights(m, mode)
    assert_matches(loss, ref.aggregate(per_token, m, mode), batch.dtype, scale=100)
    grad = [[w * s for w, s in zip(rw, rs)] for rw, rs in zip(weights, slope)]
    assert_matches(logp.grad, grad, batch.dtype, scale=100)
    assert_matches(stats["clipfrac_low"], ref.masked_mean(low, m), batch.dtype)
    assert_matches(stats["clipfrac_high"], ref.masked_mean(high, m), batch.dtype)
    assert_matches(stats["clipfrac"], ref.masked_mean(low, m) + ref.masked_mean(high, m), batch.dtype)
    assert_matches(stats["dual_clipfrac"], ref.masked_mean(dual, m), batch.dtype)


def test_clip_higher_and_dual_clip_by_hand():
    # ratios e^0.25 = 1.284 and e^-1.5 = 0.223 and e^2 = 7.39
    logp = torch.tensor([[0.25, 0.25, 2.0, 2.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4), 0.2,
                                      clip_eps_high=0.28, dual_clip=3.0, aggregation="seq-mean-token-sum")
    loss.backward()
    r, r2 = torch.tensor(0.25).exp().item(), torch.tensor(2.0).exp().item()
    # token 0: 1.284 > 1.2 but < 1.28? no: 1.284 > 1.28 -> clipped high, A > 0 -> flat at -1.28.
    # token 1: A < 0, unclipped -A * r = 1.284 is larger -> kept, gradient r.
    # token 2: A < 0, ratio 7.39: loss 7.39 capped at 3 by the dual clip, gradient 0.
    # token 3: A > 0, ratio clipped at 1.28 -> flat.
    assert loss.item() == pytest.approx(-1.28 + r + 3.0 - 1.28)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, r, 0.0, 0.0]]))
    assert stats["clipfrac_high"].item() == pytest.approx(1.0)
    assert stats["dual_clipfrac"].item() == pytest.approx(0.25) and r2 > 3.0


@pytest.mark.parametrize("kw, message", [
    ({"dual_clip": 1.0}, "dual_clip must be > 1"), ({"clip_eps_high": 0.0}, "clip_eps_high"),
    ({"aggregation": "mean"}, "aggregation must be one of"),
])
def test_policy_loss_variant_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        clipped_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2, **kw)


# --- kl_loss -----------------------------------------------------------------------------------------


@given(batches(n=2), estimators, modes)
def test_kl_loss_value_and_gradient_match_reference(batch, estimator, mode):
    logp, ref_logp = batch.xs
    logp = logp.clone().requires_grad_()
    ref_logp = ref_logp.clone().requires_grad_()
    out = kl_loss(logp, ref_logp, batch.mask, estimator, mode)
    out.backward()
    m = batch.mask.tolist()
    kl = ref.per_token_kl(logp.tolist(), ref_logp.tolist(), m, estimator)
    assert_matches(out, ref.aggregate(kl, m, mode), batch.dtype, scale=10)
    slope = ref.kl_gradient(logp.tolist(), ref_logp.tolist(), m, estimator)
    weights = ref.aggregation_weights(m, mode)
    assert_matches(logp.grad, [[w * s for w, s in zip(rw, rs)] for rw, rs in zip(weights, slope)],
                   batch.dtype, scale=10)
    assert ref_logp.grad is None  # the reference is a constant


@given(batches(n=2), estimators, modes, st.sampled_from(JUNK))
def test_kl_loss_never_reads_padding(batch, estimator, mode, junk):
    logp, ref_logp = batch.xs
    m = batch.mask
    base = kl_loss(logp, ref_logp, m, estimator, mode)
    junk_logp = with_junk(logp, m, junk).requires_grad_()
    out = kl_loss(junk_logp, with_junk(ref_logp, m, -junk), m, estimator, mode)
    assert torch.equal(out, base)
    out.backward()
    assert torch.isfinite(junk_logp.grad).all() and (junk_logp.grad[~batch.bool_mask] == 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_what_each_kl_estimators_gradient_estimates(seed):
    """Exact expectations over a categorical policy (all V outcomes enumerated, weighted by the
    detached probabilities, i.e. on-policy sampling): E[grad k1] = 0, E[grad k2] = grad
    KL(pi || ref), E[grad k3] = grad KL(ref || pi) - the docstring's claims."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(7, generator=gen, dtype=torch.float64), -1)
    logp = torch.log_softmax(theta, -1)
    p = logp.exp().detach()

    def expected_grad(estimator):
        # The gradient of the loss on a one-token response x, weighted by p(x), summed over x.
        per_x = torch.stack([torch.autograd.grad(kl_loss(logp[x : x + 1, None], ref_logp[x : x + 1, None],
                                                         torch.ones(1, 1), estimator), theta, retain_graph=True)[0]
                             for x in range(7)])
        return (p[:, None] * per_x).sum(0)

    reverse = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta, retain_graph=True)[0]
    forward = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta, retain_graph=True)[0]
    torch.testing.assert_close(expected_grad("k1"), torch.zeros(7, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(expected_grad("k2"), reverse)
    torch.testing.assert_close(expected_grad("k3"), forward)
    assert not torch.allclose(reverse, forward)  # the two really differ, so the test tells them apart
