"""A value head on the policy's own trunk: no weight copy, and PPO still trains the right things."""
import math

import pytest
import torch

from ppolab.config import GenerationConfig, PPOConfig
from ppolab.models import Reference, ValueModel, base_trunk, value_head_on_policy
from ppolab.ppo.trainer import PPOTrainer
from tests.helpers import ppo_trainer, tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning, friend", "Where is the station?", "Merci beaucoup"]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def arabic_fraction(prompts, responses):
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


def make_trainer(policy, value):
    return ppo_trainer(policy, value=value, reward=arabic_fraction, seed=0,
                       batch_size=8, minibatch_size=4, ppo_epochs=2, lr=3e-3, kl_coef=0.01)


@pytest.mark.parametrize("lora", [False, True])
def test_backbone_is_the_policy_trunk_with_no_parameter_copy(lora):
    policy = tiny_policy(lora=lora)
    value = value_head_on_policy(policy, head_hidden=16)
    assert isinstance(value, ValueModel) and value.shares_trunk
    assert value.backbone is base_trunk(policy)
    policy_ptrs = {p.data_ptr() for p in policy.parameters()}
    head_ids = {id(p) for p in value.head.parameters()}
    for p in value.parameters():
        assert id(p) in head_ids or p.data_ptr() in policy_ptrs
    # Everything but the head is storage the policy already holds.
    assert {p.data_ptr() for p in value.backbone.parameters()} <= policy_ptrs
    assert {id(p) for p in value.trainable_parameters()} == head_ids
    with torch.no_grad():
        assert value(IDS, torch.ones_like(IDS)).shape == IDS.shape


def test_a_separate_value_model_still_trains_all_its_parameters():
    value = ValueModel.from_policy(tiny_policy())
    assert not value.shares_trunk
    assert [id(p) for p in value.trainable_parameters()] == [id(p) for p in value.parameters()]


def test_ppo_step_with_lora_policy_and_shared_value_head():
    policy = tiny_policy(lora=True)
    base = tiny_policy(lora=False)  # same seed: the weights the LoRA policy was built on
    value = value_head_on_policy(policy)
    t = make_trainer(policy, value)

    head_ids = {id(p) for p in value.head.parameters()}
    value_opt_ids = {id(p) for g in t.value_optimizer.param_groups for p in g["params"]}
    assert value_opt_ids == head_ids
    policy_opt_ids = {id(p) for g in t.policy_optimizer.param_groups for p in g["params"]}
    assert not (policy_opt_ids & head_ids)
    assert policy_opt_ids and all("lora_" in n for n, p in policy.named_parameters() if id(p) in policy_opt_ids)

    with torch.no_grad():
        base_logits = base(input_ids=IDS).logits
        assert torch.equal(t.ref(input_ids=IDS).logits, base_logits)
        pol_logits = policy(input_ids=IDS).logits.clone()
        v_before = value(IDS, torch.ones_like(IDS)).clone()
    base_state = {k: v.clone() for k, v in policy.get_base_model().state_dict().items() if "lora_" not in k}

    stats = t.ppo_step(PROMPTS * 2)

    for k in ("policy_loss", "value_loss", "kl", "approx_kl", "grad_norm"):
        assert math.isfinite(stats[k]), k
    with torch.no_grad():
        assert not torch.allclose(policy(input_ids=IDS).logits, pol_logits)  # the adapter trained
        assert not torch.allclose(value(IDS, torch.ones_like(IDS)), v_before)
        assert torch.equal(t.ref(input_ids=IDS).logits, base_logits)  # reference == base, still
    after = policy.get_base_model().state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base_state.items())  # no base weight moved
