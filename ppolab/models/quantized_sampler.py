"""A quantised sampling copy of a policy for CPU decoding (`GenerationConfig.sampler_quantization`).

Decoding at RLHF batch sizes reads every weight once per token, and on a CPU that is the cost: the
copy holds its linear layers (the output head too) as int8 weights, per output channel, and runs
them with PyTorch's own dynamic-quantization kernels (fbgemm on x86: int8 x int8 products, the
activations quantised per call). Everything else (embeddings, norms, attention arithmetic) is the
policy's own tensors, shared, not copied, so it follows the policy's updates for free and the copy
costs only the int8 weights. "fp16" instead stores the weights in half precision and keeps the
activations in fp32 (fbgemm's fp16 GEMM): half the bytes of fp32, a rounding error of ~1e-4. A LoRA adapter is merged into the weights it quantises, and
`refresh_quantized` re-quantises whatever can have trained (adapted layers, trainable linears) before
each rollout.

The copy samples a slightly different distribution: the rollout's `logprobs` are the policy's,
recomputed; `sampler_logprobs` are the copy's, and `PPOConfig.rollout_correction` corrects for the
difference. `torch.ao.quantization` is deprecated upstream (torchao is its successor) but still
ships, with its CPU kernels, in the torch this project locks.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .builders import disable_dropout, is_peft
from .merged import _lora_layers
from .vocab_trim import TrimmedLMHead


KINDS = {"int8": torch.qint8, "fp16": torch.float16}


def _quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    out_f, in_f = weight.shape
    q = DynamicQuantizedLinear(in_f, out_f, bias_=bias is not None, dtype=KINDS[kind])
    _set_weight(q, weight, bias)
    return q


@torch.no_grad()
def _set_weight(q: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """int8: symmetric per output channel, scale = max |w| / 127 for each row; fp16: the weights rounded."""
    w = weight.detach().float().cpu()
    if q.weight().dtype == torch.qint8:
        scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).double()
        w = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    q.set_weight_bias(w, None if bias is None else bias.detach().float().cpu())


class QuantizedTrimmedLMHead(TrimmedLMHead):
    """A `TrimmedLMHead` whose kept rows are a dynamically quantised linear layer."""

    def __init__(self, head: TrimmedLMHead, kind: str):
        nn.Module.__init__(self)
        self.vocab_size = head.vocab_size
        self.register_buffer("keep_ids", head.keep_ids, persistent=False)
        self.small = _quantized_linear(head.rows, None, kind)

    def kept_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.small(hidden.float())


def _effective_weight(source: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias `source` computes with: a LoRA layer's base weight plus its active deltas."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(source, BaseTunerLayer):
        base = source.base_layer
        weight = base.weight.detach().clone()
        for adapter in source.active_adapters:
            if adapter in source.lora_A:
                weight += source.get_delta_weight(adapter)
        return weight, base.bias
    return source.weight, source.bias


def _targets(model: nn.Module):
    """(name, module) of the layers to quantise: LoRA-wrapped and plain linears, trimmed heads."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    done: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in done):
            continue  # inside a layer already taken whole (a LoRA layer's base_layer, lora_A, ...)
        if isinstance(m, (BaseTunerLayer, nn.Linear, TrimmedLMHead)) and name:
            done.append(name)
            yield name, m


def quantized_sampling_copy(policy: nn.Module, kind: str = "int8") -> nn.Module:
    """A plain causal LM computing `policy` (LoRA merged) with `kind` ("int8" or "fp16") linear layers;
    eval mode, CPU only.

    Shares every tensor it does not quantise with `policy` (a deep copy whose memo maps the policy's
    parameters and buffers to themselves), so it must never be trained or frozen itself.
    """
    if kind not in KINDS:
        raise ValueError(f"sampler_quantization: expected one of {sorted(KINDS)}, got {kind!r}")
    if any(p.device.type != "cpu" for p in policy.parameters()):
        raise ValueError(f"GenerationConfig.sampler_quantization={kind!r} samples on the CPU: the policy is on "
                         f"{next(p.device for p in policy.parameters() if p.device.type != 'cpu')}")
    if is_peft(policy):
        list(_lora_layers(policy))  # only plain LoRA linear layers merge: a clear error otherwise
    base = policy.get_base_model() if is_peft(policy) else policy
    memo = {id(t): t for t in (*base.parameters(), *base.buffers())}
    sampler = copy.deepcopy(base, memo)
    for name, source in list(_targets(base)):
        parent, _, child = name.rpartition(".")
        holder = sampler.get_submodule(parent) if parent else sampler
        if isinstance(source, TrimmedLMHead):
            setattr(holder, child, QuantizedTrimmedLMHead(source, kind))
        else:
            setattr(holder, child, _quantized_linear(*_effective_weight(source), kind))
    for p_name in ("peft_config", "_hf_peft_config_loaded"):
        if p_name in vars(sampler):
            delattr(sampler, p_name)
    return disable_dropout(sampler).eval()


def refresh_quantized(sampler: nn.Module, policy: nn.Module) -> nn.Module:
    """Re-quantise, in place, every quantised layer whose source in `policy` can have changed since."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = policy.get_base_model() if is_peft(policy) else policy
    for name, source in _targets(base):
        trainable = isinstance(source, BaseTunerLayer) or (
            isinstance(source, nn.Linear) and any(p.requires_grad for p in source.parameters()))
        if trainable:  # a trimmed head's rows are a frozen copy; frozen linears never change
            _set_weight(sampler.get_submodule(name), *_effective_weight(source))
    return sampler
