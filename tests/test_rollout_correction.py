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


# --- in the trainer's minibatch_loss and ppo_step ----------------------------------------------------

from ppolab.ppo import minibatch_loss  # noqa: E402
from ppolab.ppo.losses import policy_ratio  # noqa: E402
from ppolab.token_attribution import response_logprobs  # noqa: E402
from tests.test_trainer import PROMPTS, make_trainer  # noqa: E402

CORRECTIONS = [("tis", "token"), ("tis", "sequence"), ("mis", "token"), ("mis", "sequence")]


def _loss_and_grads(t, exp, **config):
    import dataclasses

    c = dataclasses.replace(t.config, **config)
    T = exp.mask.shape[1]
    t.policy.zero_grad(set_to_none=True)
    loss, stats = minibatch_loss(t.policy, t.value, exp, c, n_response=T, temperature=t.generation.temperature,
                                 policy_weight=1.0, token_weight=1.0, logprob_fn=response_logprobs,
                                 norm_length=t.generation.max_new_tokens
                                 if c.loss_aggregation == "seq-mean-token-sum-norm" else None)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in t.policy.parameters() if p.grad is not None], stats


@pytest.mark.parametrize("estimator", ["gae", "grpo"])  # a critic and a critic-free estimator
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_identical_sampler_every_correction_equals_none_in_minibatch_loss(estimator, aggregation):
    kw = dict(advantage_estimator=estimator, group_size=2) if estimator != "gae" else {}
    t = make_trainer(loss_aggregation=aggregation, **kw)
    exp = t.make_experience(t.rollout(PROMPTS * (2 // t.config.group_size)))
    assert exp.sampler_logprobs is exp.logprobs  # the policy's own fp32 sampler
    with torch.no_grad():  # one update's distance from the rollout, so ratios are not all 1
        for p in t.policy.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    loss, grads, _ = _loss_and_grads(t, exp)
    for mode, level in CORRECTIONS:
        got, got_grads, stats = _loss_and_grads(t, exp, rollout_correction=mode, rollout_correction_level=level)
        assert torch.equal(got, loss) and all(torch.equal(a, b) for a, b in zip(got_grads, grads)), (mode, level)
        assert stats["rollout_correction/weight_mean"] == 1.0


@pytest.mark.parametrize("estimator", ["gae", "rloo", "reinforce_pp"])
def test_identical_sampler_every_correction_makes_the_same_ppo_step(estimator):
    kw = dict(advantage_estimator=estimator, group_size=2) if estimator == "rloo" else dict(
        advantage_estimator=estimator)
    want = None
    for mode, level in [("none", "token"), *CORRECTIONS[1:3]]:
        t = make_trainer(rollout_correction=mode, rollout_correction_level=level, **kw)
        stats = t.ppo_step(PROMPTS * (2 // t.config.group_size))
        assert stats["mismatch/logprob_abs_max"] == 0.0 and stats["mismatch/k3_kl"] == 0.0
        params = [p.detach().clone() for p in t.policy.parameters()]
        if want is None:
            want = params
        assert all(torch.equal(a, b) for a, b in zip(params, want)), (mode, level)


@pytest.mark.parametrize("level", LEVELS)
def test_tis_with_a_perturbed_sampler_gives_the_reference_gradient(level):
    """The sampler drew with other log-probs: minibatch_loss's gradient is the reference's, a loop over
    tokens of min(rho, C) x the token's clipped surrogate, token-mean."""
    import dataclasses

    t = make_trainer()
    exp = t.make_experience(t.rollout(PROMPTS * 2))
    g = torch.Generator().manual_seed(3)
    sampler = exp.logprobs + 0.3 * torch.randn(exp.logprobs.shape, generator=g) * exp.mask
    exp = dataclasses.replace(exp, sampler_logprobs=sampler)
    none_loss, none_grads, _ = _loss_and_grads(t, exp)
    loss, grads, stats = _loss_and_grads(t, exp, rollout_correction="tis", rollout_correction_cap=1.5,
                                         rollout_correction_level=level)
    assert stats["rollout_correction/weight_mean"] != 1.0
    # The reference: token by token, the same terms built from scratch.
    t.policy.zero_grad(set_to_none=True)
    T = exp.mask.shape[1]
    lp = response_logprobs(t.policy, exp.input_ids, exp.attention_mask, T, t.generation.temperature)
    m = exp.mask.tolist()
    w = ref.rollout_correction_weights(exp.logprobs.tolist(), sampler.tolist(), m, "tis", 1.5, level)
    ratio = policy_ratio(lp, exp.logprobs)
    terms = []
    for b, tt in ref.valid_positions(m):
        a, r = float(exp.advantages[b, tt]), ratio[b, tt]
        terms.append(w[b][tt] * torch.maximum(-a * r, -a * torch.clamp(r, 1 - t.config.clip_eps, 1 + t.config.clip_eps)))
    ref_loss = torch.stack(terms).sum() / len(terms)
    vf_loss, _ = _value_loss(t, exp)
    (ref_loss + t.config.vf_coef * vf_loss).backward()
    ref_grads = [p.grad.clone() for p in t.policy.parameters() if p.grad is not None]
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grads, none_grads))  # it mattered


def _value_loss(t, exp):
    from ppolab.ppo import clipped_value_loss

    T = exp.mask.shape[1]
    v = t.value(exp.input_ids, exp.attention_mask)[:, -T - 1 : -1]
    return clipped_value_loss(v, exp.values, exp.returns, exp.mask, t.config.value_clip_eps)
