"""A merged copy of a LoRA policy for sampling: `W + s * B @ A` in plain linear layers.

Decoding runs the policy once per token at small batch, where each adapted layer's two extra small
matmuls (and peft's per-layer bookkeeping) cost as much as they do in a full forward. A copy with the
adapter merged in samples the same distribution (to fp32 rounding) with none of that; it costs one
more copy of the base weights. The reference is untouched: still the policy with its adapter off.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .builders import disable_dropout, freeze, is_peft


def merged_copy(policy: nn.Module) -> nn.Module:
    """A plain causal LM (no peft) with `policy`'s active LoRA adapter merged in; frozen, eval mode."""
    if not is_peft(policy):
        raise ValueError("merged_copy: the policy has no LoRA adapter to merge (GenerationConfig.merged_lora_sampling)")
    merged = freeze(disable_dropout(copy.deepcopy(policy).merge_and_unload()))
    refresh_merged(merged, policy)  # also checks that every adapted layer is one we can merge
    return merged


def _lora_layers(policy: nn.Module):
    """(name, layer) of the adapted layers, named as in the base model (and so in the merged copy)."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in policy.get_base_model().named_modules():
        if isinstance(module, BaseTunerLayer):
            if not isinstance(module, LoraLinear) or any(module.use_dora.get(a) for a in module.active_adapters):
                raise ValueError(f"merged_copy: {name} is a {type(module).__name__}; "
                                 "only plain LoRA linear layers merge")
            yield name, module


@torch.no_grad()
def refresh_merged(merged: nn.Module, policy: nn.Module) -> nn.Module:
    """Rewrite `merged`'s adapted weights from `policy`'s base weights and current adapter, in place.

    The same sum as peft's merge (`W + delta` per active adapter), so a fresh copy and a refreshed
    one are equal. Only the adapted layers are written: a LoRA policy's other weights never train.
    """
    for name, layer in _lora_layers(policy):
        weight = merged.get_submodule(name).weight
        weight.copy_(layer.base_layer.weight)
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight += layer.get_delta_weight(adapter)
    return merged
