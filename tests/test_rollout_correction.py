"""Rollout correction (TIS / MIS) and the sampler-trainer mismatch, against the loops in _reference.py."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _reference as ref
from _reference import JUNK, assert_matches, batches, with_junk
from ppolab.advantage.aggregate import AGGREGATIONS
from ppolab.config import ConfigError, PPOConfig
from ppolab.ppo import clipped_policy_loss
from ppolab.ppo.rollout_correction import LEVELS, MODES, mismatch_stats, rollout_correction_weights

modes = st.sampled_from(MODES)
levels = st.sampled_from(LEVELS)
caps = st.floats(1.0, 5.0)


@given(batches(n=2, scale=0.5), modes, caps, levels)
def test_weights_match_the_reference_loop(batch, mode, cap, level):
    lp, slp = batch.xs
    w, stats = rollout_correction_weights(lp, slp, batch.mask, mode, cap, level)
    expected = ref.rollout_correction_weights(lp.tolist(), slp.tolist(), batch.mask.tolist(), mode, cap, level)
    assert w.shape == lp.shape and w.dtype == batch.dtype and not w.requires_grad
    assert_matches(w, expected, batch.dtype)
    m = batch.bool_mask
    assert_matches(stats["rollout_correction/weight_mean"], float(w[m].mean()), batch.dtype)
    assert 0.0 <= float(stats["rollout_correction/capped_fraction"]) <= 1.0
    if mode == "tis":
        assert float(w[m].max()) <= cap * (1 + 1e-6)
    if mode == "mis":  # kept tokens keep their ratio; dropped ones are exactly 0
        assert bool(((w[m] == 0) | (w[m] <= cap * (1 + 1e-6))).all())


@given(batches(n=1, scale=0.5), modes, caps, levels)
def test_identical_sampler_gives_weight_one(batch, mode, cap, level):
    (lp,) = batch.xs
    w, stats = rollout_correction_weights(lp, lp.clone(), batch.mask, mode, cap, level)
    assert torch.equal(w, batch.bool_mask.to(batch.dtype))
    assert float(stats["rollout_correction/capped_fraction"]) == 0.0


@given(batches(n=2, scale=0.5), modes, caps, levels, st.sampled_from(JUNK))
def test_weights_never_read_padding_and_are_row_wise(batch, mode, cap, level, junk):
    lp, slp = batch.xs
    m = batch.mask
    w, _ = rollout_correction_weights(lp, slp, m, mode, cap, level)
    w_junk, _ = rollout_correction_weights(with_junk(lp, m, junk), with_junk(slp, m, -junk), m, mode, cap, level)
    assert torch.equal(w, w_junk)
    assert bool((w[~batch.bool_mask] == 0).all())
    for b in range(lp.shape[0]):  # batch invariance: a row alone gets the weights it gets in the batch
        alone, _ = rollout_correction_weights(lp[b : b + 1], slp[b : b + 1], m[b : b + 1], mode, cap, level)
        torch.testing.assert_close(alone[0], w[b], rtol=1e-6, atol=0)


def test_sequence_level_uses_the_product_and_huge_ratios_stay_finite():
    lp = torch.tensor([[0.3, 0.4, 0.0], [500.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    zero = torch.zeros(2, 3)
    w, _ = rollout_correction_weights(lp, zero, mask, "tis", 3.0, "sequence")
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.7), math.exp(0.7), 0.0], [3.0, 0.0, 0.0]]))
    w, stats = rollout_correction_weights(lp, zero, mask, "mis", 2.0, "sequence")
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))  # e^0.7 > 2: row masked
    assert float(stats["rollout_correction/capped_fraction"]) == 1.0
    w, _ = rollout_correction_weights(lp, zero, mask, "mis", 2.0, "token")
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.3), math.exp(0.4), 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("kw,match", [
    ({"mode": "is"}, "mode"), ({"level": "row"}, "level"), ({"cap": 0.0}, "cap"), ({"cap": math.inf}, "cap"),
])
def test_bad_arguments_are_clear_errors(kw, match):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=match):
        rollout_correction_weights(x, x, torch.ones(1, 2), **{"mode": "tis", **kw})


@pytest.mark.parametrize("field,value", [
    ("rollout_correction", "ppo"), ("rollout_correction_cap", 0.5), ("rollout_correction_level", "row"),
])
def test_config_rejects_bad_settings(field, value):
    with pytest.raises(ConfigError, match=f"PPOConfig.{field}"):
        PPOConfig(**{field: value}).validate()


@given(batches(n=2, scale=0.8))
def test_mismatch_stats_match_the_reference(batch):
    lp, slp = batch.xs
    got = mismatch_stats(lp, slp, batch.mask)
    mean_abs, max_abs, k3, outside = ref.mismatch_stats(lp.tolist(), slp.tolist(), batch.mask.tolist())
    assert got["mismatch/logprob_abs_mean"] == pytest.approx(mean_abs, rel=1e-4, abs=1e-6)
    assert got["mismatch/logprob_abs_max"] == pytest.approx(max_abs, rel=1e-4, abs=1e-6)
    assert got["mismatch/k3_kl"] == pytest.approx(k3, rel=1e-3, abs=1e-6)
    assert got["mismatch/ratio_outside_0.5_2"] == pytest.approx(outside, abs=1e-6)
    same = mismatch_stats(lp, lp.clone(), batch.mask)
    assert all(v == 0.0 for v in same.values())


# --- in the policy loss ----------------------------------------------------------------------------


@given(batches(n=3, scale=0.3), modes, caps, levels, st.sampled_from(AGGREGATIONS))
def test_identical_sampler_leaves_the_policy_loss_and_gradient_unchanged(batch, mode, cap, level, aggregation):
    logp, old, adv = batch.xs
    w, _ = rollout_correction_weights(old, old.clone(), batch.mask, mode, cap, level)
    results = []
    for weights in (None, w):
        x = logp.clone().requires_grad_()
        loss, _ = clipped_policy_loss(x, old, adv, batch.mask, 0.2, aggregation=aggregation, weights=weights)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@given(batches(n=4, scale=0.3), st.sampled_from(["tis", "mis"]), caps, levels, st.sampled_from(AGGREGATIONS))
def test_weighted_policy_gradient_matches_the_reference(batch, mode, cap, level, aggregation):
    """A perturbed sampler: the gradient is the reference's per-token slope x weight x aggregation weight."""
    logp, old, adv, noise = batch.xs
    sampler = old + noise  # what a quantised sampler would have drawn with
    w, _ = rollout_correction_weights(old, sampler, batch.mask, mode, cap, level)
    x = logp.clone().requires_grad_()
    loss, _ = clipped_policy_loss(x, old, adv, batch.mask, 0.2, aggregation=aggregation, weights=w)
    loss.backward()
    m = batch.mask.tolist()
    per_token, slope, *_ = ref.policy_loss_terms(logp.tolist(), old.tolist(), adv.tolist(), m, 0.2)
    w_ref = ref.rollout_correction_weights(old.tolist(), sampler.tolist(), m, mode, cap, level)
    agg = ref.aggregation_weights(m, aggregation)
    expected_grad = [[s * wt * a for s, wt, a in zip(*rows)] for rows in zip(slope, w_ref, agg)]
    expected_loss = ref.aggregate([[lt * wt for lt, wt in zip(*rows)] for rows in zip(per_token, w_ref)], m,
                                  aggregation)
    assert_matches(loss, expected_loss, batch.dtype, scale=10)
    assert_matches(x.grad, expected_grad, batch.dtype, scale=10)
