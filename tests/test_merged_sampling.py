"""Sampling from a merged copy of the LoRA adapter: same log-probs as the LoRA policy, refreshed after updates."""
import pytest
import torch
import torch.nn.functional as F

from ppolab.config import GenerationConfig, PPOConfig
from ppolab.models import Reference, base_trunk, value_head_on_policy
from ppolab.models.builders import position_ids_from_mask
from ppolab.models.merged import merged_copy
from ppolab.ppo.trainer import PPOTrainer
from ppolab.token_attribution import SequenceGenerator
from tests.helpers import tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning", "Where is the nearest pharmacy? I need help"]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def trained_adapter(policy, seed=0):
    """Move lora_B off zero so that the adapter changes the outputs."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.3)
    return policy


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def slow_logprobs(model, ids, mask, n, temperature):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp = F.log_softmax(out[:, -n - 1 : -1].float() / temperature, -1)
    return logp.gather(-1, ids[:, -n:, None])[..., 0]


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_merged_copy_computes_the_lora_policy_and_leaves_the_base_alone(arch):
    policy = trained_adapter(tiny_policy(arch, lora=True))
    base = logits(Reference(policy))
    merged = merged_copy(policy)
    assert not hasattr(merged, "peft_config") and not any(p.requires_grad for p in merged.parameters())
    assert torch.allclose(logits(merged), logits(policy), atol=1e-5)
    assert not torch.allclose(logits(merged), base, atol=1e-3)
    assert torch.equal(logits(Reference(policy)), base)  # merging a copy left the policy's base as it was
    assert {p.data_ptr() for p in merged.parameters()}.isdisjoint({p.data_ptr() for p in policy.parameters()})


def test_a_policy_without_adapter_is_an_error():
    with pytest.raises(ValueError, match="no LoRA adapter"):
        SequenceGenerator(tiny_policy(), tiny_tokenizer(), GenerationConfig(merged_lora_sampling=True))


@pytest.mark.parametrize("shared_value", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_rollout_from_the_merged_copy_has_the_lora_policys_logprobs(arch, shared_value):
    policy = trained_adapter(tiny_policy(arch, lora=True))
    value = value_head_on_policy(policy) if shared_value else None
    if value is not None:
        torch.nn.init.normal_(value.head.net.weight, std=0.3)
    gen = SequenceGenerator(policy, tiny_tokenizer(),
                            GenerationConfig(max_new_tokens=6, temperature=0.8, merged_lora_sampling=True),
                            Reference(policy), value)
    calls = []
    hook = base_trunk(policy).register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(0)
    r = gen.generate(PROMPTS)
    hook.remove()
    T = r.mask.shape[1]
    # The policy's own trunk ran for its recomputed log-probs and the reference: sampling used the copy.
    assert len(calls) == 2
    expected = slow_logprobs(policy, r.input_ids, r.attention_mask, T, 0.8) * r.mask
    assert torch.allclose(r.logprobs * r.mask, expected, atol=1e-5)
    assert r.sampler_logprobs is not r.logprobs  # the copy's own, equal to fp32 rounding
    assert torch.allclose(r.sampler_logprobs * r.mask, expected, atol=1e-5)
    with torch.no_grad():
        base_lp = slow_logprobs(Reference(policy), r.input_ids, r.attention_mask, T, 0.8)
    assert torch.allclose(r.ref_logprobs, base_lp, atol=1e-5)
    if value is not None:
        with torch.no_grad():
            assert torch.allclose(r.values, value(r.input_ids, r.attention_mask)[:, -T - 1 : -1], atol=1e-5)


def test_the_merged_copy_follows_the_adapter_after_each_update():
    policy = tiny_policy(lora=True)
    value = value_head_on_policy(policy)
    torch.manual_seed(0)
    t = PPOTrainer(PPOConfig(batch_size=6, minibatch_size=3, ppo_epochs=1, lr=3e-2, kl_coef=0.01), policy, None,
                   value, lambda p, r: [len(x) / 10 for x in r], tiny_tokenizer(),
                   GenerationConfig(max_new_tokens=6, temperature=0.9, merged_lora_sampling=True))
    merged = t.generator.sampler
    assert merged is not policy
    for step in range(2):
        before = logits(policy)
        t.ppo_step(PROMPTS * 2)
        assert not torch.allclose(logits(policy), before, atol=1e-4)  # the adapter moved
        r = t.generator.generate(PROMPTS)  # the next rollout refreshes the copy first
        assert torch.allclose(logits(merged), logits(policy), atol=1e-5), step
        T = r.mask.shape[1]
        expected = slow_logprobs(policy, r.input_ids, r.attention_mask, T, 0.9)
        assert torch.allclose(r.logprobs * r.mask, expected * r.mask, atol=1e-5)
