"""4-bit (NF4) and 8-bit bitsandbytes models on the CPU: QLoRA policy, adapter-off reference on the same
quantized base, value head on the quantized trunk, quantized reward model, one `ppo_step` each.

Tiny models are saved to a folder and loaded back through `from_pretrained` with the quantization
config, the path a real checkpoint takes (bitsandbytes quantizes at load). Hidden size 32 is enough
for bitsandbytes' blocks (64 values per 4-bit block; a 32x32 weight is 16 blocks).
"""
from __future__ import annotations

import math

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes", reason="the 'quant' extra (bitsandbytes) is not installed")

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig  # noqa: E402
from ppolab.models import (  # noqa: E402
    Reference, RewardModel, build_policy, build_value_model, is_quantized, load_tokenizer, quantization_config,
    value_head_on_policy,
)
from ppolab.models.builders import QuantizationError, dequantized_copy  # noqa: E402
from ppolab.ppo import PPOTrainer  # noqa: E402
from ppolab.token_attribution import response_logprobs  # noqa: E402

from tests.helpers import tiny_policy, tiny_tokenizer  # noqa: E402

MODES = {"4bit": {"load_in_4bit": True, "bnb_4bit_use_double_quant": True}, "8bit": {"load_in_8bit": True}}
LAYER = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}
# The merged fp32 copy against the quantized forward: 4-bit dequantizes to the same fp32 weights;
# 8-bit's forward casts its inputs to fp16 and multiplies in int8, the copy in fp32.
TOL = {"4bit": 1e-4, "8bit": 5e-2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Llama policy folder and a reward-model folder (our format) on another seed."""
    root = tmp_path_factory.mktemp("quant")
    tok = tiny_tokenizer()
    tiny_policy("llama").save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    RewardModel.from_causal_lm(tiny_policy("llama", seed=1), tok).save(root / "rm")
    return root


def _frozen_state(model) -> dict[str, torch.Tensor]:
    """Every tensor of the base model (quantized weights, their scales, norms, embeddings), cloned."""
    out = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()] if "lora_" not in n}
    for name, m in model.named_modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)  # 4-bit: per-block scales
        if qs is not None:
            out[name + ".absmax"] = qs.absmax.detach().clone()
        if isinstance(m, bnb.nn.Linear8bitLt):  # 8-bit: per-row scales, moved into `state` at the first forward
            scb = m.state.SCB if m.state.SCB is not None else m.weight.SCB
            out[name + ".SCB"] = scb.detach().clone()
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_qlora_ppo_step(folders, mode):
    """One PPO step on a 4-bit / 8-bit base: finite stats; only the adapter and the value head move;
    the quantized base (weights and scales) is bit-identical; the reference is the adapter-off
    policy, equal before and after the step, and the quantized reward model scores."""
    torch.manual_seed(0)
    mcfg = ModelConfig(policy_path=str(folders / "policy"), lora=True, lora_r=4, lora_alpha=8, **MODES[mode])
    tok = load_tokenizer(mcfg.policy_path)
    policy = build_policy(mcfg, tok)
    reward = RewardModel.load(folders / "rm", mcfg)
    assert is_quantized(policy) and is_quantized(reward.backbone)
    q_proj = policy.get_base_model().model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == LAYER[mode]
    assert reward.head.last.weight.dtype == torch.float32

    ref, value = Reference(policy), value_head_on_policy(policy)
    assert ref.shares_policy_weights
    base_before = _frozen_state(policy)
    adapter_before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    head_before = [p.detach().clone() for p in value.head.parameters()]
    assert adapter_before and all("lora_" in n for n in adapter_before)

    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]] * 2)
    mask = torch.ones_like(ids)
    ref_lp_before = response_logprobs(ref, ids, mask, 4)

    cfg = PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, lr=5e-2, value_lr=5e-2)
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, stop_at_eos=False)
    trainer = PPOTrainer(cfg, policy, ref, value, reward, tok, gen)
    stats = trainer.ppo_step(["hello there", "a b c", "one two", "good morning"])
    floats = {k: v for k, v in stats.items() if isinstance(v, float)}
    assert floats and all(math.isfinite(v) for v in floats.values()), floats

    assert base_before.keys() == _frozen_state(policy).keys()
    for name, t in _frozen_state(policy).items():
        assert torch.equal(t, base_before[name]), f"base tensor {name} changed"
    moved = [n for n, p in policy.named_parameters() if p.requires_grad and not torch.equal(p, adapter_before[n])]
    assert moved, "no adapter weight changed"
    assert any(not torch.equal(a, b) for a, b in zip(head_before, value.head.parameters()))

    ref_lp_after = response_logprobs(ref, ids, mask, 4)
    torch.testing.assert_close(ref_lp_after, ref_lp_before, rtol=0, atol=0)
    with torch.no_grad(), policy.disable_adapter():
        torch.testing.assert_close(response_logprobs(policy, ids, mask, 4), ref_lp_after, rtol=0, atol=0)
    with torch.no_grad():
        trained = response_logprobs(policy, ids, mask, 4)
        assert not torch.allclose(trained, ref_lp_after), "adapter had no effect"
        # What a checkpoint saves: the base dequantized, the trained adapter merged in full precision.
        merged = dequantized_copy(policy)
        assert not is_quantized(merged) and not hasattr(merged.config, "quantization_config")
        merged_lp = response_logprobs(merged, ids, mask, 4)
        torch.testing.assert_close(merged_lp, trained, rtol=0, atol=TOL[mode])
        assert (merged_lp - trained).abs().max() < (merged_lp - ref_lp_after).abs().max(), "adapter not merged"


def test_quantized_reward_scores_follow_full_precision(folders):
    """A 4-bit and an 8-bit reward model score close to the fp32 one (same head, same texts)."""
    prompts, responses = ["hello", "a b", "one two three", "x"], [" world", " c d", " four", " y z"]
    full = RewardModel.load(folders / "rm").score(prompts, responses)
    for mode, tol in (("8bit", 0.05), ("4bit", 0.3)):
        q = RewardModel.load(folders / "rm", ModelConfig(**MODES[mode])).score(prompts, responses)
        assert not torch.equal(q, full)  # it really is another (quantized) computation
        err = (q - full).abs().max() / full.abs().max().clamp(min=1e-6)
        assert err < tol, (mode, q, full)


def test_quantization_config_fields():
    """ModelConfig's bnb fields reach BitsAndBytesConfig; off means None."""
    assert quantization_config(ModelConfig()) is None
    q = quantization_config(ModelConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                                        dtype="bfloat16"))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    q8 = quantization_config(ModelConfig(load_in_8bit=True), skip_modules=("score",))
    assert q8.load_in_8bit and not q8.load_in_4bit and set(q8.llm_int8_skip_modules) == {"lm_head", "score"}
    with pytest.raises(ValueError, match="bnb_4bit_quant_type"):
        ModelConfig(load_in_4bit=True, bnb_4bit_quant_type="int4").validate()


def test_quantized_policy_needs_lora_and_a_checkpoint(folders):
    with pytest.raises(QuantizationError, match="lora=true"):
        build_policy(ModelConfig(policy_path=str(folders / "policy"), load_in_4bit=True), tiny_tokenizer())
    with pytest.raises(QuantizationError, match="policy_path"):
        build_policy(ModelConfig(lora=True, load_in_8bit=True), tiny_tokenizer())


def test_value_from_quantized_reward_is_refused(folders):
    """value_init='reward' would train a copy of a 4-bit trunk: a clear error instead."""
    reward = RewardModel.load(folders / "rm", ModelConfig(load_in_4bit=True))
    with pytest.raises(ValueError, match="quantized"):
        build_value_model(tiny_policy("llama", lora=True), reward, "reward")


def test_reward_training_on_a_quantized_trunk_trains_the_head_only(folders):
    """Unfreezing 4-bit layers is a clear error; with freeze_backbone the head trains on the 4-bit trunk."""
    from ppolab.reward import RewardTrainConfig, train_reward_model

    pairs = [{"prompt": "hi", "chosen": " good answer", "rejected": " bad"}] * 4
    reward = RewardModel.load(folders / "rm", ModelConfig(load_in_4bit=True))
    with pytest.raises(QuantizationError, match="freeze_backbone"):
        train_reward_model(reward, pairs, config=RewardTrainConfig(epochs=1, batch_size=2), progress=False)
    head = reward.head.last.weight.detach().clone()
    train_reward_model(reward, pairs, config=RewardTrainConfig(epochs=1, batch_size=2, freeze_backbone=True, lr=1e-2),
                       progress=False)
    assert not torch.equal(head, reward.head.last.weight)


@pytest.mark.parametrize("mode", list(MODES))
def test_quantized_reward_model_saves_and_reloads_to_the_same_scores(folders, tmp_path, mode):
    """Saved in full precision (transformers cannot re-save a pre-quantized load), quantized again at
    load: the same codes, so the same scores up to the re-quantized scales (double quantisation
    rounds the 4-bit block scales to 8 bits again: 0.3% here, against ~10% for quantizing at all)."""
    prompts, responses = ["hello", "a b", "one two three"], [" world", " c d", " four"]
    mcfg = ModelConfig(**MODES[mode])
    reward = RewardModel.load(folders / "rm", mcfg)
    with torch.no_grad():
        reward.head.last.bias.fill_(0.25)  # something the save must carry
    before = reward.score(prompts, responses)
    reward.save(tmp_path / "once")
    again = RewardModel.load(tmp_path / "once", mcfg)
    assert is_quantized(again.backbone)
    torch.testing.assert_close(again.score(prompts, responses), before, rtol=1e-2, atol=1e-3)
    again.save(tmp_path / "twice")
    torch.testing.assert_close(RewardModel.load(tmp_path / "twice", mcfg).score(prompts, responses), before,
                               rtol=1e-2, atol=1e-3)
