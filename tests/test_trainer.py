import copy
import math

import pytest
import torch

from ppolab.config import GenerationConfig, PPOConfig
from ppolab.models import Reference, RewardModel, ValueModel
from ppolab.ppo.trainer import PPOTrainer
from tests.helpers import tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning, friend", "Where is the station?", "Merci beaucoup"]


def arabic_fraction(prompts, responses):
    """A reward that favours Arabic characters: a task a tiny random model can learn in a few steps."""
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


def make_trainer(lora=False, reward=arabic_fraction, **ppo):
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    policy = tiny_policy(lora=lora)
    cfg = PPOConfig(**{"batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2, "lr": 3e-3, "kl_coef": 0.01, **ppo})
    value = None if cfg.critic_free else ValueModel.from_policy(policy)
    return PPOTrainer(cfg, policy, Reference(policy), value, reward, tok, GenerationConfig(max_new_tokens=8))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True])
def test_step_has_finite_stats_changes_policy_not_reference(lora):
    t = make_trainer(lora=lora)
    ref_before = _snapshot(t.ref.model) if t.ref.model is not None else None
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref_logits = t.ref(input_ids=ids).logits.clone()
        pol_logits = t.policy(input_ids=ids).logits.clone()
    stats = t.ppo_step(PROMPTS * 2)
    for k in ("score_mean", "reward_mean", "kl", "policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy"):
        assert math.isfinite(stats[k]), k
    assert len(stats["generated_texts"]) == 8 and set(stats["timings"]) >= {"generate", "update"}
    with torch.no_grad():
        assert not torch.allclose(t.policy(input_ids=ids).logits, pol_logits)
        assert torch.equal(t.ref(input_ids=ids).logits, ref_logits)
    if ref_before is not None:
        assert all(torch.equal(v, t.ref.model.state_dict()[k]) for k, v in ref_before.items())


@pytest.mark.parametrize("estimator", ["gae", "grpo", "rloo", "reinforce_pp"])
def test_a_few_seeded_steps_raise_the_mean_score(estimator):
    group = 1 if estimator == "gae" else 4  # GAE: 16 prompts once; the others: 4 prompts x 4 samples
    t = make_trainer(lr=2e-2, batch_size=16, minibatch_size=8, ppo_epochs=4, advantage_estimator=estimator,
                     group_size=group)
    scores = [t.ppo_step(PROMPTS * (4 // group))["score_mean"] for _ in range(12)]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.2, scores


def test_gradient_accumulation_matches_one_big_minibatch():
    t1 = make_trainer(ppo_epochs=1, minibatch_size=8, micro_batch_size=8)
    t2 = make_trainer(ppo_epochs=1, minibatch_size=8, micro_batch_size=2)
    t2.policy.load_state_dict(t1.policy.state_dict())
    t2.value.load_state_dict(t1.value.state_dict())
    exp = t1.make_experience(t1.rollout(PROMPTS * 2))
    t1.update(exp)
    t2.update(copy.deepcopy(exp))
    for (n, a), b in zip(t1.policy.named_parameters(), t2.policy.parameters()):
        assert torch.allclose(a, b, atol=1e-5), n


def test_reward_model_scores_the_text_it_was_trained_and_normalised_on():
    from ppolab.models.scalar import reward_text

    tok = tiny_tokenizer()
    rm = RewardModel.from_causal_lm(tiny_policy(), tok)
    rm.set_normalization(0.3, 2.0)
    t = make_trainer(reward=rm)
    roll = t.rollout(PROMPTS * 2)
    scores = t.score(roll)
    for i in range(len(roll)):  # prompt + response + EOS, tokenized alone, scored at its last token
        ids = torch.tensor(tok(reward_text(roll.prompts[i], roll.response_texts[i], tok.eos_token),
                               add_special_tokens=False)["input_ids"])
        alone = (rm.score_last(ids[None], torch.ones_like(ids)[None]) - 0.3) / 2.0
        assert torch.allclose(scores[i], alone[0], atol=1e-4)


def test_non_finite_reward_is_an_error_naming_the_response():
    t = make_trainer(reward=lambda p, r: [0.0] * 3 + [float("nan")] + [0.0] * 4)
    with pytest.raises(ValueError, match=r"reward: non-finite score .* response 3"):
        t.ppo_step(PROMPTS * 2)


def test_wrong_batch_and_missing_scores_are_errors():
    t = make_trainer(reward=lambda p, r: [0.0])
    with pytest.raises(ValueError, match="batch_size"):
        t.ppo_step(PROMPTS)
    with pytest.raises(ValueError, match="1 scores for 8"):
        t.ppo_step(PROMPTS * 2)


# -- critic-free estimators, KL in the loss --------------------------------------------------------
def test_critic_free_step_samples_groups_and_runs_no_value_model():
    t = make_trainer(advantage_estimator="grpo", group_size=4, kl_in="loss", loss_aggregation="seq-mean-token-mean")
    assert t.value is None and t.value_optimizer is None
    rollout = t.rollout(PROMPTS[:2])
    assert rollout.prompts == [PROMPTS[0]] * 4 + [PROMPTS[1]] * 4  # each prompt's group in consecutive rows
    exp = t.make_experience(rollout)
    assert torch.equal(exp.values, torch.zeros_like(exp.values))  # no value forward ran
    # Every valid token of a row carries the row's advantage; each group's advantages sum to 0.
    adv, mask = exp.advantages, exp.mask.bool()
    per_row = adv[:, 0]
    assert torch.equal(adv, torch.where(mask, per_row[:, None], 0.0))
    assert torch.allclose(per_row.view(2, 4).sum(1), torch.zeros(2), atol=1e-5)
    stats = t.finish_step(rollout, exp, t.update(exp))
    assert "value_loss" not in stats and math.isfinite(stats["kl_loss"]) and math.isfinite(stats["policy_loss"])
    assert stats["kl_coef"] == 0.0  # no KL penalty in the rewards: it is in the loss
    for k in ("clipfrac_low", "clipfrac_high", "dual_clipfrac"):
        assert 0.0 <= stats[k] <= 1.0, k


def test_kl_in_loss_takes_the_kl_out_of_the_rewards():
    t = make_trainer(kl_coef=0.5, kl_in="loss")
    exp = t.make_experience(t.rollout(PROMPTS * 2))
    last = exp.mask.sum(1) - 1
    expected = torch.zeros_like(exp.rewards).scatter(1, last[:, None], exp.scores[:, None])
    assert torch.equal(exp.rewards, expected)  # the score alone, at the last token
    t2 = make_trainer(kl_coef=0.5)
    exp2 = t2.make_experience(t2.rollout(PROMPTS * 2))
    assert not torch.equal(exp2.rewards, torch.zeros_like(exp2.rewards).scatter(
        1, exp2.mask.sum(1, keepdim=True) - 1, exp2.scores[:, None]))  # KL penalty in the rewards


@pytest.mark.parametrize("kw, message", [
    ({"advantage_estimator": "grpo"}, "needs group_size >= 2"),
    ({"advantage_estimator": "rloo", "group_size": 1}, "needs group_size >= 2"),
    ({"advantage_estimator": "grpo", "group_size": 3}, "not a multiple of group_size 3"),
    ({"advantage_estimator": "ppo"}, "advantage_estimator: must be one of"),
    ({"loss_aggregation": "sum"}, "loss_aggregation: must be one of"),
    ({"kl_in": "both"}, "kl_in: must be"),
    ({"kl_in": "loss", "adaptive_kl": True}, "adaptive_kl"),
    ({"dual_clip": 1.0}, "dual_clip: must be > 1"),
    ({"clip_eps_high": 0.0}, "clip_eps_high: must be > 0"),
    ({"group_size": 0}, "group_size: must be an int >= 1"),
])
def test_research_switches_are_validated(kw, message):
    from ppolab.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        PPOConfig(batch_size=8, minibatch_size=4, **kw).validate()


def test_value_model_must_match_the_estimator_and_prompts_the_groups():
    tok, policy = tiny_tokenizer(), tiny_policy()
    grpo = PPOConfig(batch_size=8, minibatch_size=4, advantage_estimator="grpo", group_size=4)
    with pytest.raises(ValueError, match="'grpo' uses no value model: pass value=None"):
        PPOTrainer(grpo, policy, Reference(policy), ValueModel.from_policy(policy), arabic_fraction, tok)
    with pytest.raises(ValueError, match="'gae' needs a value model"):
        PPOTrainer(PPOConfig(batch_size=8, minibatch_size=4), policy, Reference(policy), None, arabic_fraction, tok)
    t = PPOTrainer(grpo, policy, Reference(policy), None, arabic_fraction, tok, GenerationConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="got 8, each sampled group_size=4 times, PPOConfig.batch_size is 8"):
        t.ppo_step(PROMPTS * 2)


def test_config_names_match_the_math_packages():
    from ppolab.config import core
    from ppolab.ppo import AGGREGATIONS

    assert core.AGGREGATIONS == AGGREGATIONS  # config imports nothing of ours, so it keeps a copy


def test_make_experience_composes_each_estimator_as_documented():
    """The estimator switch against the plain-loop references, on one rollout with a KL penalty."""
    import dataclasses

    import _reference as ref

    group = 4
    t = make_trainer(advantage_estimator="grpo", group_size=group, kl_coef=0.3)
    rollout = t.rollout(PROMPTS[:2])
    rollout = dataclasses.replace(rollout, ref_logprobs=rollout.ref_logprobs - 0.2 * torch.rand(rollout.mask.shape))
    for estimator in ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"):
        t = make_trainer(advantage_estimator=estimator, group_size=group, kl_coef=0.3)
        exp = t.make_experience(rollout)
        rewards, mask = exp.rewards.tolist(), exp.mask.int().tolist()
        sequence = [sum(r for r, m in zip(row, mrow) if m) for row, mrow in zip(rewards, mask)]
        returns = ref.rewards_to_go(rewards, mask, 1.0)
        if estimator == "gae":
            adv, returns = ref.gae(rewards, exp.values.tolist(), mask, 1.0, 0.95)
            expected = ref.masked_whiten(adv, mask)
        elif estimator == "reinforce_pp":
            expected = ref.masked_whiten(returns, mask)
        elif estimator == "rloo":
            expected = ref.expand_to_tokens(ref.rloo_advantages(sequence, group), mask)
        else:
            scale = "std" if estimator == "grpo" else "none"
            expected = ref.expand_to_tokens(ref.group_advantages(sequence, group, scale), mask)
        torch.testing.assert_close(exp.advantages.double(), torch.tensor(expected, dtype=torch.float64),
                                   atol=1e-5, rtol=1e-5, msg=estimator)
        torch.testing.assert_close(exp.returns.double(), torch.tensor(returns, dtype=torch.float64),
                                   atol=1e-5, rtol=1e-5, msg=estimator)
        assert any(r < 0 for row in rewards for r in row)  # the KL penalty is in the rewards


@pytest.mark.parametrize("estimator", ["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("junk", [float("nan"), float("inf"), 1e30])
def test_padding_never_leaks_into_advantages(estimator, junk):
    """Junk in the padded positions of rewards and values changes no advantage or return
    (the bug class of verl #50, TRL #3021, OpenRLHF #1249)."""
    from _reference import with_junk

    t = make_trainer(advantage_estimator=estimator, group_size=4)
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(6)[None, :] < torch.tensor([1, 6, 3, 2, 6, 4, 1, 5])[:, None]
    rewards, values = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    rewards, values = torch.where(mask, rewards, 0.0), torch.where(mask, values, 0.0)
    clean = t.estimate_advantages(rewards, values, mask)
    dirty = t.estimate_advantages(with_junk(rewards, mask, junk), with_junk(values, mask, -junk), mask)
    for c, d in zip(clean, dirty):
        assert torch.equal(c, d) and torch.isfinite(d).all() and (d[~mask] == 0).all()
