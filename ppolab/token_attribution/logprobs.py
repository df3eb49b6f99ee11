"""Log-probs of the taken tokens (and values) from one trunk pass, without a `[B, T, V]` fp32 copy.

Two savings over "forward, log_softmax, gather":

- chunked log-softmax: `log p(target) = logit[target] - logsumexp(logits)` over a few rows at a
  time, so no `[B, T, V]` fp32 log-softmax (nor its `exp` for the entropy) is ever whole. When the
  head can be split off the model (`output_head`), the head runs chunk by chunk too, and with
  gradients each chunk is checkpointed: the backward keeps only the hidden states `[B, T, H]` and
  recomputes one chunk's logits at a time (with Gemma's 262k vocabulary, one fp32 `[16, 64, V]`
  is 1.07 GB);
- fused trunk pass: with a value head on the policy's own trunk (`value_head_on_policy`), one trunk
  forward gives both the response log-probs and the values (`logprobs_and_values`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.builders import Reference, base_trunk, is_peft, position_ids_from_mask

# Elements of fp32 logits per chunk (32 MB): a small vocabulary is one chunk (no overhead), Gemma's
# 262k vocabulary is 32 rows at a time.
CHUNK_ELEMENTS = 1 << 23

# Model types whose CausalLM forward is exactly `lm_head(trunk(...).last_hidden_state)`, followed by
# Gemma's `tanh(logits / c) * c` when `config.final_logit_softcapping` is set. Others (a logit
# scale, a bias, a multimodal wrapper) take the model's own forward.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"})


def output_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """hidden `[..., H]` -> logits `[..., V]` as `model`'s forward computes them from its trunk's last
    hidden state (`base_trunk(model)`), or None when this model type's head is not known to be plain."""
    inner = model.get_base_model() if is_peft(model) else model
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES or base_trunk(model) is inner:
        return None
    head = inner.get_output_embeddings()  # a TrimmedLMHead after vocab_trim; a LoRA layer if targeted
    cap = getattr(config, "final_logit_softcapping", None)
    if not cap:
        return head

    def capped(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden) / cap  # the same three ops as Gemma's forward, so the same rounding
        return torch.tanh(logits) * cap

    return capped


def _chunk_logprobs(x: torch.Tensor, targets: torch.Tensor, head, temperature: float, with_entropy: bool):
    """`[N, H]` hidden (or `[N, V]` logits when head is None) -> log-probs `[N]` (and entropy `[N]`)."""
    logits = (head(x) if head is not None else x).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logprobs
    # H = -sum p (x - lse) = lse - sum p x; excluded vocab rows (-1e4) have p = 0 exactly.
    return logprobs, lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def token_logprobs(
    x: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    with_entropy: bool = False,
    vocab_size: int | None = None,
):
    """Log-probs `[B, T]` of `targets` `[B, T]`, and with `with_entropy` the entropy `[B, T]`.

    `x`: hidden states `[B, T, H]` and the output `head` (whose width is `vocab_size`), or logits
    `[B, T, V]` with head None. Rows go `CHUNK_ELEMENTS // V` at a time. With gradients, a head and
    more than one chunk, each chunk is checkpointed: its logits are recomputed in the backward
    instead of kept, so what the graph holds is `x`, not `[B, T, V]`.
    """
    B, T = targets.shape
    flat, flat_t = x.reshape(B * T, x.shape[-1]), targets.reshape(B * T)
    V = x.shape[-1] if head is None else vocab_size
    rows = max(1, CHUNK_ELEMENTS // V)
    recompute = head is not None and B * T > rows and torch.is_grad_enabled() and flat.requires_grad
    outs = []
    for i in range(0, B * T, rows):
        args = (flat[i : i + rows], flat_t[i : i + rows], head, temperature, with_entropy)
        outs.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if recompute else _chunk_logprobs(*args))
    if not with_entropy:
        return torch.cat(outs).reshape(B, T)
    return torch.cat([o[0] for o in outs]).reshape(B, T), torch.cat([o[1] for o in outs]).reshape(B, T)


def _trunk_hidden(trunk: nn.Module, input_ids, attention_mask, n_response: int) -> torch.Tensor:
    """`[B, P + T]` -> last hidden states `[B, T, H]` at the positions that predict the response."""
    out = trunk(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state[:, -n_response - 1 : -1]  # position t-1 predicts token t


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_response: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """Log-probs `[B, T]` of the last `n_response` tokens of `input_ids` `[B, P + T]`, in one forward.

    Logits are divided by the sampling temperature first, so these are the log-probs of the
    distribution the tokens were drawn from (before top-k/top-p truncation, as in TRL).
    With `with_entropy`, also returns the per-token entropy `[B, T]` of that distribution.
    A `Reference` is unwrapped (adapter off, no grad) so its head runs chunked as well.
    """
    args = (input_ids, attention_mask, n_response, temperature, with_entropy)
    if isinstance(model, Reference):
        with torch.no_grad():
            if model.shares_policy_weights:
                with model._policy[0].disable_adapter():
                    return response_logprobs(model._policy[0], *args)
            return response_logprobs(model.model, *args)
    targets = input_ids[:, -n_response:]
    head = output_head(model)
    if head is not None:
        hidden = _trunk_hidden(base_trunk(model), input_ids, attention_mask, n_response)
        return token_logprobs(hidden, targets, temperature, head, with_entropy,
                              vocab_size=_vocab_size(model))
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=n_response + 1,  # the LM head runs on response positions only
    )
    # Slice here too: a model that ignores `logits_to_keep` returns every position, and reading
    # those from the left would score prompt positions without any error.
    logits = out.logits[:, -n_response - 1 : -1]
    return token_logprobs(logits, targets, temperature, None, with_entropy)


def _vocab_size(model: nn.Module) -> int:
    """The width of the logits (a TrimmedLMHead's too: it fills the rows it drops)."""
    return (model.get_base_model() if is_peft(model) else model).config.vocab_size


def fuses_with(policy: nn.Module, value) -> bool:
    """True when `value` is a head on `policy`'s own trunk and the policy's head can be split off."""
    return (getattr(value, "shares_trunk", False) and getattr(value, "backbone", None) is base_trunk(policy)
            and output_head(policy) is not None)


def logprobs_and_values(
    policy: nn.Module,
    value,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_response: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """(log-probs `[B, T]`, values `[B, T]`), or (log-probs, entropy, values) with `with_entropy`.

    `values[:, t]` is V(s_t), read at the position before action t. With a value head on the
    policy's trunk (`fuses_with`), the trunk runs once (adapter on) and both heads read its last
    hidden states at the response positions; otherwise the policy and the value model each run
    their own forward, as two calls.
    """
    if not fuses_with(policy, value):
        out = response_logprobs(policy, input_ids, attention_mask, n_response, temperature, with_entropy)
        values = value(input_ids, attention_mask)[:, -n_response - 1 : -1]
        return (*out, values) if with_entropy else (out, values)
    hidden = _trunk_hidden(value.backbone, input_ids, attention_mask, n_response)
    values = value.values_from_hidden(hidden)
    out = token_logprobs(hidden, input_ids[:, -n_response:], temperature, output_head(policy), with_entropy,
                         vocab_size=_vocab_size(policy))
    return (*out, values) if with_entropy else (out, values)
