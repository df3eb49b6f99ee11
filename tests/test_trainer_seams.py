"""The trainer's seams: state_dict resume, the given log-prob function, minibatch_loss's weighting,
the Recorder / ValueHead protocols and the typed Experience."""
import copy

import pytest
import torch
from torch import nn

from ppolab.advantage.aggregate import AGGREGATIONS, aggregation_units
from ppolab.config import PPOConfig
from ppolab.inspect import RolloutRecorder
from ppolab.models import ValueModel, value_head_on_policy
from ppolab.ppo import Experience, Recorder, ValueHead, minibatch_loss
from ppolab.token_attribution import response_logprobs
from tests.helpers import tiny_policy
from tests.test_trainer import PROMPTS, make_trainer


def _stats(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "timings"}


def _weights(t) -> dict:
    return {part: copy.deepcopy(m.state_dict()) for part, m in (("policy", t.policy), ("value", t.value))
            if m is not None}


@pytest.mark.parametrize("kw", [dict(adaptive_kl=True, kl_target=0.01, kl_horizon=100),
                                dict(lora=True, advantage_estimator="grpo", group_size=2, micro_batch_size=2)])
def test_resume_from_state_dict_makes_the_uninterrupted_third_step(kw):
    run = make_trainer(**kw)
    for _ in range(2):
        run.ppo_step(PROMPTS * (2 // run.config.group_size))
    state, weights = copy.deepcopy(run.state_dict()), _weights(run)
    want = _stats(run.ppo_step(PROMPTS * (2 // run.config.group_size)))
    assert want["step"] == 3

    def fresh():
        t = make_trainer(**kw)  # the reference is the initial policy's, as the run's is
        for part, sd in weights.items():
            getattr(t, part).load_state_dict(sd)
        return t

    resumed = fresh()
    resumed.load_state_dict(state)
    assert _stats(resumed.ppo_step(PROMPTS * (2 // run.config.group_size))) == want
    assert all(torch.equal(v, run.policy.state_dict()[k]) for k, v in resumed.policy.state_dict().items())
    # Not by luck: the same weights without the trainer's state make another step.
    assert _stats(fresh().ppo_step(PROMPTS * (2 // run.config.group_size))) != want


def test_load_state_dict_refuses_a_checkpoint_of_the_other_estimator():
    state = make_trainer(advantage_estimator="grpo", group_size=2).state_dict()
    with pytest.raises(ValueError, match="value optimizer"):
        make_trainer().load_state_dict(state)


def test_the_given_logprob_function_scores_the_update_and_the_recorder(tmp_path):
    calls = []

    def counting(model, *args, **kw):
        calls.append(kw.get("with_entropy", False))
        return response_logprobs(model, *args, **kw)

    want = _stats(make_trainer().ppo_step(PROMPTS * 2))
    t = make_trainer()
    t.logprob_fn = counting
    t.recorder = RolloutRecorder(tmp_path / "rollouts.jsonl", per_step=2)
    assert _stats(t.ppo_step(PROMPTS * 2)) == want  # a separate value model: the same arithmetic
    n_micro = t.config.ppo_epochs * t.config.batch_size // t.config.minibatch_size
    assert calls == [True] * n_micro + [False]  # each micro-batch, then the recorder's pass


def _experience(t) -> Experience:
    return t.make_experience(t.rollout(PROMPTS * 2))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_minibatch_loss_of_weighted_micro_batches_sums_to_the_whole(mode):
    t = make_trainer(loss_aggregation=mode, kl_in="loss", entropy_coef=0.01)
    exp = _experience(t)
    c, T = t.config, exp.mask.shape[1]
    kw = dict(n_response=T, temperature=t.generation.temperature, logprob_fn=response_logprobs,
              norm_length=t.generation.max_new_tokens if mode == "seq-mean-token-sum-norm" else None)
    whole, whole_stats = minibatch_loss(t.policy, t.value, exp, c, policy_weight=1.0, token_weight=1.0, **kw)
    parts = [exp.select(torch.tensor(rows)) for rows in ([0, 3, 5], [1, 2, 4, 6, 7])]
    units, tokens = aggregation_units(exp.mask, mode), float(exp.mask.sum())
    loss, stats = 0.0, {}
    for mb in parts:
        part, part_stats = minibatch_loss(t.policy, t.value, mb, c, token_weight=float(mb.mask.sum()) / tokens,
                                          policy_weight=aggregation_units(mb.mask, mode) / units, **kw)
        loss = loss + part
        for k, v in part_stats.items():
            stats[k] = stats.get(k, 0.0) + v
    torch.testing.assert_close(loss, whole, rtol=1e-5, atol=1e-6)
    assert stats.keys() == whole_stats.keys() >= {"policy_loss", "kl_loss", "entropy", "value_loss", "clipfrac"}
    for k, v in whole_stats.items():
        assert stats[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_recorder_and_value_models_satisfy_the_protocols(tmp_path):
    policy = tiny_policy()
    assert isinstance(RolloutRecorder(tmp_path / "r.jsonl"), Recorder)
    assert isinstance(ValueModel.from_policy(policy), ValueHead)
    assert isinstance(value_head_on_policy(policy), ValueHead)
    assert not isinstance(nn.Linear(2, 1), ValueHead)
    assert not isinstance(object(), Recorder)


def test_experience_select_and_the_rollouts_sampler_logprobs():
    t = make_trainer()
    rollout = t.rollout(PROMPTS * 2)
    assert rollout.sampler_logprobs is not None and rollout.sampler_logprobs.shape == rollout.mask.shape
    rollout.sampler_logprobs = rollout.logprobs + 0.5
    exp = t.make_experience(rollout)
    assert torch.equal(exp.sampler_logprobs, rollout.sampler_logprobs) and len(exp) == 8
    rows = torch.tensor([6, 1])
    sub = exp.select(rows)
    assert len(sub) == 2
    for name, x in exp.tensors().items():
        assert torch.equal(getattr(sub, name), x[rows]), name
    assert torch.equal(exp.select(slice(2, 4)).scores, exp.scores[2:4])
