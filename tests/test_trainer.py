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
    return PPOTrainer(cfg, policy, Reference(policy), ValueModel.from_policy(policy), reward, tok,
                      GenerationConfig(max_new_tokens=8))


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


def test_a_few_seeded_steps_raise_the_mean_score():
    t = make_trainer(lr=2e-2, batch_size=16, minibatch_size=8, ppo_epochs=4)
    scores = [t.ppo_step(PROMPTS * 4)["score_mean"] for _ in range(12)]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.2, scores


def test_gradient_accumulation_matches_one_big_minibatch():
    t1 = make_trainer(ppo_epochs=1, minibatch_size=8, micro_batch_size=8)
    t2 = make_trainer(ppo_epochs=1, minibatch_size=8, micro_batch_size=2)
    t2.policy.load_state_dict(t1.policy.state_dict())
    t2.value.load_state_dict(t1.value.state_dict())
    exp = t1.make_experience(t1.rollout(PROMPTS * 2))
    t1.update(exp)
    t2.update({k: v.clone() for k, v in exp.items()})
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
