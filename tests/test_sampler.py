"""The sampler's own log-probs in every rollout, and the int8 CPU sampling copy."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from ppolab.config import ConfigError, GenerationConfig
from ppolab.models import Reference, base_trunk
from ppolab.models.builders import position_ids_from_mask
from ppolab.models.quantized_sampler import quantized_sampling_copy, refresh_quantized
from ppolab.models.vocab_trim import trim_output_vocabulary
from ppolab.ppo.rollout_correction import mismatch_stats, rollout_correction_weights
from ppolab.token_attribution import SequenceGenerator
from tests.helpers import tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning", "Where is the nearest pharmacy? I need help"]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*quantize_per:UserWarning")


def slow_logprobs(model, ids, mask, n, temperature):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp = F.log_softmax(out[:, -n - 1 : -1].float() / temperature, -1)
    return logp.gather(-1, ids[:, -n:, None])[..., 0]


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def moved_adapter(policy, seed=0, std=0.3):
    """Move every LoRA B (or, without LoRA, every linear weight a little) as an update would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n or (p.requires_grad and p.dim() == 2 and "lora" not in n and "embed" not in n):
                p.add_(torch.randn(p.shape, generator=g) * (std if "lora_B" in n else 0.02))
    return policy


def test_the_policys_own_fp32_sampler_gives_one_tensor_for_both():
    torch.manual_seed(0)
    gen = SequenceGenerator(tiny_policy(), tiny_tokenizer(), GenerationConfig(max_new_tokens=8, temperature=0.8))
    r = gen.generate(PROMPTS)
    assert r.sampler_logprobs is r.logprobs and "policy_forward" not in gen.timings
    assert mismatch_stats(r.logprobs, r.sampler_logprobs, r.mask)["mismatch/logprob_abs_max"] == 0.0


@pytest.mark.parametrize("setting,dtype", [(False, torch.float32), (None, torch.bfloat16)])
def test_a_recomputed_rollout_keeps_what_the_sampler_drew_with(setting, dtype):
    torch.manual_seed(0)
    policy = tiny_policy("llama").to(dtype)
    gen = SequenceGenerator(policy, tiny_tokenizer(),
                            GenerationConfig(max_new_tokens=8, temperature=0.8, logprobs_from_sampling=setting))
    r = gen.generate(PROMPTS)
    m = r.mask.bool()
    assert "policy_forward" in gen.timings and r.sampler_logprobs is not r.logprobs
    assert r.sampler_logprobs.dtype == torch.float32 and bool((r.sampler_logprobs[~m] == 0).all())
    assert torch.allclose(r.logprobs[m], slow_logprobs(policy, r.input_ids, r.attention_mask, m.shape[1], 0.8)[m],
                          atol=1e-5)
    diff = (r.logprobs - r.sampler_logprobs)[m].abs().max()
    if dtype == torch.float32:
        assert diff < 1e-5  # the same arithmetic up to cached-decoding rounding
    else:
        assert 0 < diff < 0.5  # bf16's cached decode rounds differently from its full forward


def _quantized(model):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return [n for n, m in model.named_modules() if isinstance(m, DynamicQuantizedLinear)]


@pytest.mark.parametrize("kind", ["int8", "fp16"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_quantized_copy_quantises_every_linear_and_shares_the_rest(arch, lora, kind):
    policy = moved_adapter(tiny_policy(arch, lora=lora))
    before = {n: p.clone() for n, p in policy.named_parameters()}
    copy = quantized_sampling_copy(policy, kind)
    base = policy.get_base_model() if lora else policy
    linears = {n.removesuffix(".base_layer") for n, m in base.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in n}
    assert set(_quantized(copy)) == linears and not hasattr(copy, "peft_config")
    shared = {p.data_ptr() for p in policy.parameters()}
    assert all(p.data_ptr() in shared for p in copy.parameters())  # norms, embeddings: the policy's own
    assert all(torch.equal(p, before[n]) and p.requires_grad == (not lora or "lora_" in n)
               for n, p in policy.named_parameters())  # the policy is untouched
    got, want = F.log_softmax(logits(copy), -1), F.log_softmax(logits(policy), -1)
    err = (got - want).abs().max()
    assert 0 < err < (0.1 if kind == "int8" else 1e-3)  # close, not equal: int8 weights and activations


def test_int8_copy_of_a_trimmed_head_quantises_the_kept_rows():
    policy = tiny_policy("llama", lora=True)
    trim_output_vocabulary(policy.get_base_model(), list(range(0, 512, 3)))
    copy = quantized_sampling_copy(policy)
    assert "lm_head.small" in _quantized(copy)
    got, want = logits(copy), logits(policy)
    kept = want > -1e3
    assert torch.equal(got[~kept], want[~kept])  # dropped tokens stay exactly excluded
    assert (got[kept] - want[kept]).abs().max() < 0.05 * want[kept].abs().max()


def test_int8_sampling_requires_the_cpu_and_recomputed_logprobs():
    with pytest.raises(ConfigError, match="logprobs_from_sampling"):
        GenerationConfig(sampler_quantization="int8", logprobs_from_sampling=True).validate()
    with pytest.raises(ConfigError, match="sampler_quantization"):
        GenerationConfig(sampler_quantization="int4").validate()


@pytest.mark.parametrize("lora", [False, True])
def test_int8_rollout_has_the_policys_logprobs_and_the_copys_sampler_logprobs(lora):
    policy = moved_adapter(tiny_policy("gemma2", lora=lora))
    gen = SequenceGenerator(policy, tiny_tokenizer(),
                            GenerationConfig(max_new_tokens=10, temperature=0.9, sampler_quantization="int8"))
    calls = []
    hook = base_trunk(policy).register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(0)
    r = gen.generate(PROMPTS)
    hook.remove()
    assert len(calls) == 2 if lora else 1  # recompute (+ the adapter-off reference): sampling used the copy
    m = r.mask.bool()
    expected = slow_logprobs(policy, r.input_ids, r.attention_mask, m.shape[1], 0.9)
    assert torch.allclose(r.logprobs[m], expected[m], atol=1e-5)
    stats = mismatch_stats(r.logprobs, r.sampler_logprobs, r.mask)
    assert 0 < stats["mismatch/logprob_abs_mean"] < 0.05 and stats["mismatch/ratio_outside_0.5_2"] == 0


@pytest.mark.parametrize("lora", [False, True])
def test_the_int8_copy_follows_the_policy_after_each_update(lora):
    policy = tiny_policy("llama", lora=lora)
    gen = SequenceGenerator(policy, tiny_tokenizer(), GenerationConfig(max_new_tokens=4, sampler_quantization="int8"))
    copy = gen.sampler
    for step in range(2):
        moved_adapter(policy, seed=step)
        stale = (logits(copy) - logits(policy)).abs().max()
        gen.generate(PROMPTS[:1])  # refreshes the copy first
        fresh = (logits(copy) - logits(policy)).abs().max()
        assert fresh < 0.5 * stale, (step, fresh, stale)
        assert torch.allclose(logits(copy), logits(quantized_sampling_copy(policy)), atol=1e-6)  # = a fresh copy
    assert refresh_quantized(copy, policy) is copy


def test_tis_brings_the_int8_samplers_expected_loss_back_to_the_policys():
    """Exact expectations over the vocabulary at real states: the loss the int8 sampler's tokens give,
    weighted by TIS, is the policy's own expected loss; unweighted it is off by the mismatch."""
    torch.manual_seed(0)
    policy = moved_adapter(tiny_policy("llama", lora=True))
    copy = quantized_sampling_copy(policy)
    p = F.log_softmax(logits(policy).reshape(-1, logits(policy).shape[-1]), -1).double()  # [S, V]
    q = F.log_softmax(logits(copy).reshape(-1, logits(copy).shape[-1]), -1).double()
    adv = torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_token = -adv  # PPO's surrogate at ratio 1: each token's loss is -A
    mask = torch.ones_like(p)
    on_policy = (p.exp() * per_token).sum(-1)  # [S] E_{a~p}[l(a)]
    off_policy = (q.exp() * per_token).sum(-1)  # what sampling from q gives uncorrected
    w, _ = rollout_correction_weights(p, q, mask, "tis", 1e3, "token")
    corrected = (q.exp() * w * per_token).sum(-1)
    assert (off_policy - on_policy).abs().max() > 1e-4  # the mismatch is there
    torch.testing.assert_close(corrected, on_policy, rtol=0, atol=1e-10)
    w2, _ = rollout_correction_weights(p, q, mask, "tis", 1.001, "token")  # a tight cap: partly corrected
    tight = (q.exp() * w2 * per_token).sum(-1)
    assert (tight - on_policy).abs().sum() < (off_policy - on_policy).abs().sum()
