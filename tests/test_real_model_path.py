"""Regression tests for the real-checkpoint path (issue #10), one per defect, on tiny local models.

Each test fails on the code before the fixes (515bcca). APIs added by the fixes are imported
inside the tests so the file still collects there.
"""

import copy

import pytest
import torch
from torch import nn

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.models import (Reference, RewardModel, ValueModel, base_trunk, build_tiny_causal_lm, build_tokenizer,
                           load_causal_lm, tiny_lm_config, wrap_lora)
from ppolab.models.builders import left_pad, position_ids_from_mask
from ppolab.ppo.trainer import PPOTrainer
from ppolab.token_attribution import Rollout, response_logprobs
from tests.helpers import ppo_trainer, tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning, friend", "Where is the station?", "Merci beaucoup"]
TINY = dict(hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=64)


def const_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def make_trainer(policy, reward=const_reward, ref="copy", tok=None, max_new_tokens=4, **ppo):
    return ppo_trainer(policy, tok=tok, reward=reward, ref=None if ref == "copy" else ref,
                       max_new_tokens=max_new_tokens,
                       **{"batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "lr": 1e-3, **ppo})


def some_ids(tok=None):
    tok = tok or tiny_tokenizer()
    return left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]], tok.pad_token_id)


# -- 1. dropout off in every module, however it is stored -------------------------------------------
def test_1_loaded_checkpoint_attention_dropout_is_off_in_train_mode(tmp_path):
    """#1: a checkpoint saved with attention_dropout=0.3 must not drop out after load_causal_lm."""
    model = tiny_policy()
    model.config.attention_dropout = 0.3
    model.save_pretrained(tmp_path)
    loaded = load_causal_lm(str(tmp_path)).train()
    ids, mask = some_ids()
    a = loaded(input_ids=ids, attention_mask=mask).logits
    b = loaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b)


def test_1_ppo_trainer_turns_lora_dropout_off_first_ratio_is_one():
    """#1: a LoRA policy with lora_dropout=0.5 given to PPOTrainer: the first minibatch's ratio is 1."""
    policy = wrap_lora(build_tiny_causal_lm(ModelConfig(**TINY), tiny_tokenizer()),
                       ModelConfig(lora=True, lora_dropout=0.5))
    torch.manual_seed(1)
    for name, p in policy.named_parameters():  # lora_B starts at 0, which would hide the dropout
        if "lora_B" in name:
            nn.init.normal_(p, std=0.5)
    t = make_trainer(policy)
    t.policy.train()
    ids, mask = some_ids()
    with torch.no_grad():
        assert torch.equal(t.policy(input_ids=ids, attention_mask=mask).logits,
                           t.policy(input_ids=ids, attention_mask=mask).logits)
    stats = t.update(t.make_experience(t.rollout(PROMPTS)))  # ppo_epochs=1, one minibatch
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] < 1e-8, stats


# -- 2. value from the reward model starts at the normalised reward ----------------------------------
@pytest.mark.parametrize("head_hidden,names,weights", [(0, ("reward",), None), (16, ("reward",), None),
                                                       (0, ("fluency", "accuracy"), [1.0, 3.0])])
def test_2_value_from_reward_model_starts_at_normalised_reward(head_hidden, names, weights):
    """#2: ValueModel.from_reward_model(rm) at the last token equals rm.score_ids (normalised)."""
    rm = RewardModel.from_causal_lm(tiny_policy(), tiny_tokenizer(), head_hidden, names, weights)
    rm.set_normalization(mean=3.0, std=4.0)
    ids, mask = some_ids()
    with torch.no_grad():
        value = ValueModel.from_reward_model(rm)(ids, mask)[:, -1]
        assert torch.allclose(value, rm.score_ids(ids, mask), atol=1e-5)


# -- 3. HF sequence-classification reward read at the mask's last token (pad == eos) ----------------
def test_3_sequence_classifier_reward_scored_at_eos_when_pad_is_eos():
    """#3: with pad == eos, an HF seq-cls reward scores the EOS position, not the token before it."""
    from transformers import AutoModelForSequenceClassification

    tok = build_tokenizer()
    tok.pad_token = tok.eos_token
    eos = tok.eos_token_id
    cfg = tiny_lm_config(ModelConfig(**TINY), tok)
    cfg.num_labels = 1
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(cfg).eval()
    t = make_trainer(build_tiny_causal_lm(ModelConfig(**TINY), tok), reward=rm, tok=tok)
    prompt_ids, prompt_mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]], eos)
    response_ids = torch.tensor([[40, 41, eos, eos], [42, 43, 44, eos]])  # EOS, then right padding (= EOS)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    zeros = torch.zeros(2, 4)
    roll = Rollout(PROMPTS[:2], prompt_ids, prompt_mask, response_ids, mask, zeros, zeros, zeros,
                   torch.tensor([True, True]), ["a", "b"])
    ids, am = roll.input_ids, roll.attention_mask
    with torch.no_grad():
        hidden = rm.model(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am)).last_hidden_state
        eos_at = prompt_ids.shape[1] + torch.tensor([2, 3])
        at_eos = rm.score(hidden[torch.arange(2), eos_at])[:, 0]
        hf_pooled = rm(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am)).logits[:, 0]
    scores = t.score(roll)
    assert torch.allclose(scores, at_eos, atol=1e-5)
    assert not torch.allclose(scores, hf_pooled, atol=1e-3)


# -- 4. PPO scores a RewardModel exactly as normalisation did (text + EOS) ---------------------------
def test_4_ppo_scores_truncated_responses_on_the_normalisation_path():
    """#4: trainer.score(rollout) == rm.score(prompts, texts), so normalised scores have mean 0, std 1."""
    from ppolab.reward.trainer import normalize_reward_model

    tok = tiny_tokenizer()
    rm = RewardModel.from_causal_lm(tiny_policy(seed=1), tok)
    t = make_trainer(tiny_policy(), reward=rm, max_new_tokens=3)
    roll = t.rollout(PROMPTS)
    assert not roll.has_eos.all()  # truncated at max_new_tokens, no EOS in the rollout ids
    assert torch.equal(t.score(roll), rm.score(roll.prompts, roll.response_texts))
    normalize_reward_model(rm, roll.prompts, roll.response_texts)
    scores = t.score(roll)
    assert abs(float(scores.mean())) < 1e-5 and abs(float(scores.std()) - 1.0) < 1e-4, scores


# -- 5. ref=None is a frozen reference, not the policy itself ---------------------------------------
def test_5_ref_none_is_a_frozen_reference_and_kl_grows():
    """#5: PPOTrainer(ref=None) anchors the KL to a frozen copy of the policy, so KL becomes > 0."""
    torch.manual_seed(0)
    t = make_trainer(tiny_policy(), ref=None, lr=3e-2, ppo_epochs=4, minibatch_size=2, max_new_tokens=6)
    assert isinstance(t.ref, Reference)
    before = copy.deepcopy(t.ref.state_dict())
    kls = [t.ppo_step(PROMPTS)["kl"] for _ in range(3)]
    assert all(torch.equal(v, t.ref.state_dict()[k]) for k, v in before.items())
    assert kls[-1] > 1e-3, kls


# -- 6. response log-probs do not trust logits_to_keep ----------------------------------------------
class IgnoresLogitsToKeep(nn.Module):
    """A model whose forward drops `logits_to_keep` and returns logits at every position."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, logits_to_keep=None, **kwargs):
        return self.model(**kwargs)


def test_6_response_logprobs_of_a_model_that_ignores_logits_to_keep():
    """#6: response_logprobs reads response positions even when the model returns full-length logits."""
    model = tiny_policy().eval()
    ids, mask = some_ids()
    with torch.no_grad():
        expected = response_logprobs(model, ids, mask, n_response=3)
        got = response_logprobs(IgnoresLogitsToKeep(model), ids, mask, n_response=3)
    assert torch.allclose(got, expected, atol=1e-6)


# -- 7. stages load with the run's ModelConfig; value_init / value_head_hidden are read --------------
def _save_tiny(path, tok):
    model = build_tiny_causal_lm(ModelConfig(**TINY), tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def test_7a_load_sft_and_reward_model_honour_model_config_dtype(tmp_path):
    """#7: load_sft and RewardModel.load use ModelConfig.dtype (bf16 backbone, fp32 reward head)."""
    from ppolab.sft import load_sft

    tok = tiny_tokenizer()
    _save_tiny(tmp_path / "sft", tok)
    RewardModel.from_causal_lm(tiny_policy(), tok).save(tmp_path / "rm")
    bf16 = ModelConfig(dtype="bfloat16")
    model, _ = load_sft(tmp_path / "sft", bf16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    rm = RewardModel.load(tmp_path / "rm", bf16)
    assert {p.dtype for p in rm.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in rm.head.parameters()} == {torch.float32}


@pytest.mark.parametrize("value_init", ["shared", "policy", "reward"])
def test_7b_build_value_model_follows_value_init(value_init):
    """#7: build_value_model honours value_init (shared / policy / reward) and value_head_hidden."""
    from ppolab.models import build_value_model

    policy = tiny_policy()
    rm = RewardModel.from_causal_lm(tiny_policy(seed=1), tiny_tokenizer())
    rm.set_normalization(mean=3.0, std=4.0)
    value = build_value_model(policy, rm, value_init, 16)
    if value_init == "shared":
        assert value.backbone is base_trunk(policy)
        assert {id(p) for p in value.trainable_parameters()} == {id(p) for p in value.head.parameters()}
    elif value_init == "policy":
        assert value.backbone is not base_trunk(policy) and isinstance(value.head.net, nn.Sequential)
        assert value.head.net[0].out_features == 16
        assert isinstance(build_value_model(policy, rm, "policy", 0).head.net, nn.Linear)
    else:
        ids, mask = some_ids()
        with torch.no_grad():
            assert torch.allclose(value(ids, mask)[:, -1], rm.score_ids(ids, mask), atol=1e-5)


def test_7c_load_policy_honours_the_run_dtype(tmp_path):
    """#7: the pipeline's load_policy(path, cfg) loads with the run's model.dtype."""
    from ppolab.pipeline import models as stages
    from ppolab.pipeline import resolve

    _save_tiny(tmp_path, tiny_tokenizer())
    cfg = resolve("cpu-test", {"model": {"dtype": "bfloat16"}})
    model, _ = stages.load_policy(tmp_path, cfg)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_7d_ppo_stage_builds_its_models_from_the_run_model_config(tmp_path, monkeypatch):
    """#7: the PPO stage loads policy and reward in the run's dtype and builds the value from value_init."""
    from ppolab.pipeline import resolve
    from ppolab.pipeline.stages import ppo as stages

    tok = tiny_tokenizer()
    _save_tiny(tmp_path / "policy", tok)
    RewardModel.from_causal_lm(tiny_policy(), tok).save(tmp_path / "rm")
    cfg = resolve("cpu-test", {"model": {"dtype": "bfloat16", "value_init": "shared", "value_head_hidden": 8},
                               "ppo": {"steps": 1, "lr": 1e-5}})
    built = {}

    class Captured(Exception):
        pass

    def capture(config, policy, ref, value, reward, tokenizer, generation=None, **kwargs):
        built.update(policy=policy, value=value, reward=reward)
        raise Captured

    monkeypatch.setattr(stages, "PPOTrainer", capture)
    with pytest.raises(Captured):
        stages.run_ppo(tmp_path, cfg, "ppo", tmp_path / "policy", tmp_path / "rm", tmp_path / "out", cfg.ppo)
    assert {p.dtype for p in built["policy"].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in built["reward"].backbone.parameters()} == {torch.bfloat16}
    value = built["value"]
    assert value.backbone is base_trunk(built["policy"]) and value.head.hidden == 8


def test_fresh_value_heads_start_at_zero_whatever_the_feature_scale():
    """Value init: a fresh head (shared trunk or copied trunk) outputs V = 0, not a random offset
    proportional to the checkpoint's hidden-state scale."""
    from ppolab.models import ValueModel, value_head_on_policy

    tok = build_tokenizer()
    policy = build_tiny_causal_lm(ModelConfig(arch="llama"), tok)
    with torch.no_grad():  # hidden states 100x larger, as in real checkpoints' final norms
        policy.model.norm.weight.mul_(100.0)
    ids = torch.randint(5, len(tok), (2, 6))
    mask = torch.ones_like(ids)
    for value in (value_head_on_policy(policy), ValueModel.from_policy(policy, head_hidden=8)):
        assert torch.equal(value(ids, mask), torch.zeros(2, 6))
