"""`model.reward_path`: a separate reward model with its own architecture, tokenizer and vocabulary
(`load_reward_model`), scoring the policy's rollouts by text."""
from __future__ import annotations

import math

import pytest
import torch

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.errors import UserError
from ppolab.models import (
    build_tiny_causal_lm, build_tokenizer, build_value_model, load_reward_model, tiny_lm_config,
)
from ppolab.ppo import PPOTrainer
from tests.helpers import tiny_policy, tiny_tokenizer

# A reward vocabulary of another size and other merges than the policy's 512-token BPE.
RM_TEXTS = ["السلام عليكم ورحمة الله", "bonjour tout le monde", "the quick brown fox jumps", "مرحبا بالعالم"] * 20
RM_CFG = ModelConfig(arch="gemma2", n_layers=1, hidden_size=32, n_heads=2, n_kv_heads=1, intermediate_size=64, seed=3)


@pytest.fixture(scope="module")
def rm_folders(tmp_path_factory):
    """A Gemma-2 sequence-classification folder and a Gemma-2 causal-LM folder, each with its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("reward_path")
    tok = build_tokenizer(RM_TEXTS, vocab_size=300)
    config = tiny_lm_config(RM_CFG, tok)
    config.num_labels = 1  # from_config(num_labels=1) fails in transformers 5 (STACK.md)
    torch.manual_seed(3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(root / "seq")
    build_tiny_causal_lm(RM_CFG, tok).save_pretrained(root / "lm")
    for name in ("seq", "lm"):
        tok.save_pretrained(root / name)
    (root / "no_tok").mkdir()
    build_tiny_causal_lm(RM_CFG, tok).save_pretrained(root / "no_tok")
    return root


def _reference_scores(folder, prompts, responses) -> torch.Tensor:
    """What transformers itself says the classifier scores: one unpadded text at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    seq, tok = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            enc = tok(p + r + tok.eos_token, return_tensors="pt", add_special_tokens=False)
            out.append(seq(**enc).logits[0, 0])
    return torch.stack(out)


def test_ppo_step_with_a_reward_model_of_another_architecture_and_vocabulary(rm_folders):
    """Llama policy (512-token BPE) + Gemma-2 classifier reward (300-token BPE): the step's scores are
    the classifier's own scores of prompt + response + EOS in its own tokenization."""
    policy_tok = tiny_tokenizer()
    reward = load_reward_model(rm_folders / "seq", ModelConfig())
    # Policy ids past the reward's embedding table: scoring by the policy's ids could not work.
    assert reward.backbone.config.vocab_size < len(policy_tok) and reward.backbone.config.model_type == "gemma2"
    assert not reward.fresh_head

    policy = tiny_policy("llama", lora=True)
    value = build_value_model(policy, reward, "shared")
    cfg = PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1)
    gen = GenerationConfig(max_new_tokens=8, stop_at_eos=False)
    trainer = PPOTrainer(cfg, policy, None, value, reward, policy_tok, gen)
    assert trainer.reward.tokenizer is reward.tokenizer  # its own, not replaced by the policy's
    prompts = ["hello there", "the cat", "bonjour", "one two"]
    rollout = trainer.rollout(prompts)
    stats = trainer.finish_step(rollout, exp := trainer.make_experience(rollout), trainer.update(exp))
    expected = _reference_scores(rm_folders / "seq", prompts, stats["generated_texts"])
    torch.testing.assert_close(torch.tensor(stats["scores"]), expected, rtol=1e-4, atol=1e-5)
    assert all(math.isfinite(v) for v in stats.values() if isinstance(v, float))


def test_causal_lm_reward_path_gets_a_fresh_head_and_its_own_tokenizer(rm_folders):
    reward = load_reward_model(rm_folders / "lm", seed=5)
    again = load_reward_model(rm_folders / "lm", seed=5)
    assert reward.fresh_head and len(reward.tokenizer) == len(again.tokenizer) < len(tiny_tokenizer())
    torch.testing.assert_close(reward.head.last.weight, again.head.last.weight)  # seeded
    assert not torch.equal(reward.head.last.weight, load_reward_model(rm_folders / "lm", seed=6).head.last.weight)
    scores = reward.score(["hello", "مرحبا"], [" world", " بالعالم"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_reward_path_errors(rm_folders, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_reward_model(tmp_path / "missing")
    with pytest.raises(UserError, match="no tokenizer"):
        load_reward_model(rm_folders / "no_tok")
    reward = load_reward_model(rm_folders / "seq")
    with pytest.raises(ValueError, match="vocabulary"):
        build_value_model(tiny_policy("llama"), reward, "reward")
