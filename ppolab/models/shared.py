"""A value model that reuses the policy's transformer trunk instead of copying it.

With a LoRA policy, one set of base weights then serves three roles:

    policy     = base trunk + LoRA adapter + LM head
    reference  = the same modules with the adapter disabled (`Reference(policy)`)
    value      = the same trunk (adapter on) + a small scalar head  (`value_head_on_policy(policy)`)

so the only memory beyond the policy is the adapter, its optimizer state and the head. The price is
that the value is no longer an independent network: its loss back-propagates into whatever trunk
parameters train (the LoRA adapter, or the whole trunk of a full policy), and the policy optimizer
applies those gradients together with the policy loss, weighted by `PPOConfig.vf_coef`. This is
the classic shared actor-critic (and TRL's former `AutoModelForCausalLMWithValueHead`); a separate
value model (`ValueModel.from_policy`) keeps the two losses apart at the cost of a second trunk.
"""
from __future__ import annotations

from torch import nn

from .builders import base_trunk
from .scalar import ValueModel


def value_head_on_policy(policy: nn.Module, head_hidden: int = 0) -> ValueModel:
    """A `ValueModel` whose backbone IS `base_trunk(policy)` (the same module, not a copy).

    Only the head is new. `value.trainable_parameters()` returns the head alone, which is what
    `PPOTrainer` hands to its value optimizer and clips, because the trunk's parameters already
    belong to the policy optimizer (stepping them twice would double-apply the update).

    Side effects of sharing, on purpose: `value.train()/eval()` switch the policy's trunk too,
    `value.to(...)` would move it, and `value.state_dict()` contains the trunk's weights.
    """
    trunk = base_trunk(policy)
    value = ValueModel(trunk, head_hidden=head_hidden, head_names=("value",)).zero_last_layer()
    value.shares_trunk = True
    # ScalarModel creates its head and head_weights on the CPU; put them where the trunk's output
    # comes out (its last parameter: the final norm) so a CUDA policy needs no `.to()` on `value`,
    # which would also touch the shared, possibly quantized, trunk.
    device = list(trunk.parameters())[-1].device
    value.head.to(device)
    value.head_weights = value.head_weights.to(device)
    return value


def build_value_model(policy: nn.Module, reward=None, value_init: str = "reward", head_hidden: int = 0) -> ValueModel:
    """The value model named by `ModelConfig.value_init`: "shared" (a head on the policy's trunk),
    "policy" (a copy of the policy's trunk, fresh head) or "reward" (a copy of the reward model,
    starting at the normalised reward PPO uses)."""
    if value_init == "shared":
        return value_head_on_policy(policy, head_hidden)
    if value_init == "policy":
        return ValueModel.from_policy(policy, head_hidden)
    if value_init == "reward":
        if reward is None or not hasattr(reward, "head"):
            raise ValueError("value_init='reward' needs a ppolab RewardModel")
        _check_value_from_reward(policy, reward)
        return ValueModel.from_reward_model(reward)
    raise ValueError(f"value_init: unknown {value_init!r}; expected 'shared', 'policy' or 'reward'")


def _check_value_from_reward(policy: nn.Module, reward) -> None:
    """A value model copied from the reward model reads the *policy's* token ids and trains whole:
    refuse a reward model of another vocabulary (`model.reward_path`) or a quantized one."""
    from .builders import is_quantized

    n_policy = base_trunk(policy).get_input_embeddings().num_embeddings
    n_reward = reward.backbone.get_input_embeddings().num_embeddings
    if n_policy != n_reward:
        raise ValueError(f"model.value_init='reward': the reward model's vocabulary ({n_reward} tokens) is not the "
                         f"policy's ({n_policy}); use value_init='shared' or 'policy' with a separate reward model")
    if is_quantized(reward.backbone):
        raise ValueError("model.value_init='reward': the reward model is quantized (4/8-bit) and a value model "
                         "trains its whole trunk; use value_init='shared' (a head on the QLoRA policy) or 'policy'")
