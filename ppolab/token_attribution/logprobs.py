"""Log-probs of the taken tokens (and values) from one trunk pass, without a `[B, T, V]` fp32 copy.

Two savings over "forward, log_softmax, gather":

- chunked log-softmax: `log p(target) = logit[target] - logsumexp(logits)` over a few rows at a
  time, so no `[B, T, V]` fp32 log-softmax (nor its `exp` for the entropy) is ever whole. When the
  head can be split off the model (`output_head`), the head runs chunk by chunk too, and with
  gradients the graph keeps the hidden states `[B, T, H]` and, when they fit `KEEP_LOGITS_BYTES`,
  the chunks' logits for the backward (else it recomputes them, one chunk at a time:
  `_ChunkedLogprobs`), never the fp32 log-softmax and its exp. With Gemma's 262k vocabulary one
  fp32 `[16, 64, V]` is 1.07 GB; a vocabulary-trimmed head is read on its kept columns only;
- fused trunk pass: with a value head on the policy's own trunk (`value_head_on_policy`), one trunk
  forward gives both the response log-probs and the values (`logprobs_and_values`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models.builders import Reference, base_trunk, is_peft, position_ids_from_mask
from ..models.vocab_trim import EXCLUDED_LOGIT, TrimmedLMHead

# Elements of fp32 logits per chunk (128 MB): a small vocabulary is one chunk (no overhead), Gemma's
# 262k vocabulary is 128 rows at a time. 32-row chunks made the head's matmuls so thin that a
# 262k-vocabulary reference pass was 1.17x slower than one whole log-softmax; 128 rows is 0.84x
# (benchmarks/logprob_memory_gemma_head.json).
CHUNK_ELEMENTS = 1 << 25
# With gradients, a forward whose fp32 logits `[N, V]` fit in this many bytes keeps each chunk's
# head output (and its graph) for the backward instead of recomputing it there: one head matmul
# fewer per update (Gemma: a 262k x 640 matmul per response token, about a fifth of a LoRA
# update's compute), for at most this much memory. 0: always recompute (least memory).
KEEP_LOGITS_BYTES = 1 << 30

# Model types whose CausalLM forward is exactly `lm_head(trunk(...).last_hidden_state)`, followed by
# Gemma's `tanh(logits / c) * c` when `config.final_logit_softcapping` is set. Others (a logit
# scale, a bias, a multimodal wrapper) take the model's own forward.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"})


def output_head(model: nn.Module) -> nn.Module | None:
    """hidden `[..., H]` -> logits `[..., V]` as `model`'s forward computes them from its trunk's last
    hidden state (`base_trunk(model)`), or None when this model type's head is not known to be plain."""
    inner = model.get_base_model() if is_peft(model) else model
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES or base_trunk(model) is inner:
        return None
    head = inner.get_output_embeddings()  # a TrimmedLMHead after vocab_trim; a LoRA layer if targeted
    cap = getattr(config, "final_logit_softcapping", None)
    return _Softcapped(head, cap) if cap else head


class _Softcapped(nn.Module):
    """Gemma's `tanh(logits / c) * c` after the head (a module, so the head's parameters show)."""

    def __init__(self, head: nn.Module, cap: float):
        super().__init__()
        self.head, self.cap = head, cap

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The same three ops as Gemma's forward, so the same rounding.
        logits = self.head(hidden) / self.cap
        return torch.tanh(logits) * self.cap


def logprob_head(model: nn.Module):
    """(hidden `[..., H]` -> logits `[..., K]`, kept ids `[K]` or None, V) for log-prob passes, or None.

    A `TrimmedLMHead` without a softcap gives its K kept columns only: the others are -1e4, whose
    probability is exactly 0 in fp32, so the log-softmax over K columns equals the one over V and
    costs K/V of it (Gemma's Arabic trim: 13x fewer). Otherwise the whole head, kept ids None.
    """
    head = output_head(model)
    if head is None:
        return None
    inner = model.get_base_model() if is_peft(model) else model
    V = inner.config.vocab_size  # the logits' width (a TrimmedLMHead's too: it fills what it drops)
    trimmed = inner.get_output_embeddings()
    if isinstance(trimmed, TrimmedLMHead) and head is trimmed:
        return trimmed.kept_logits, trimmed.keep_ids, V
    return head, None, V


def _scaled_logits(head, x: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = (head(x) if head is not None else x).float()
    return logits / temperature if temperature != 1.0 else logits


def _target_columns(targets: torch.Tensor, keep_ids: torch.Tensor | None, width: int):
    """Column of each target `[N]` in the logits, and whether it is there (a dropped id is not)."""
    if keep_ids is None:
        return targets, torch.ones_like(targets, dtype=torch.bool)
    col = torch.searchsorted(keep_ids, targets).clamp(max=width - 1)
    return col, keep_ids[col] == targets


class _ChunkedLogprobs(torch.autograd.Function):
    """x `[N, D]` -> (log-probs `[N]`, entropy `[N]`) of targets `[N]` under softmax(head(x) / temperature).

    Forward and backward go `rows` at a time, and the graph keeps x and two numbers per row (the
    log-sum-exp and E_p[z]); the backward recomputes one chunk's logits (or, with `keep_logits`,
    reuses the chunk's head output kept from the forward: `KEEP_LOGITS_BYTES`) and applies the
    closed-form gradients, with z = logits / temperature and p = softmax(z):
        d logp(target) / dz = onehot(target) - p,      d entropy / dz = -p * (z - E_p[z]).
    Gradients reach x, and any trainable head parameters (a full policy's tied embeddings) by a
    backward through the recomputed head, as a reentrant checkpoint does.
    """

    @staticmethod
    def forward(ctx, x, targets, head, keep_ids, excluded, temperature, rows, with_entropy, keep_logits):
        ctx.set_materialize_grads(False)
        lps, ents, lses, means = [], [], [], []
        ctx.kept = []  # (chunk input, its head output with graph) per chunk, when keep_logits
        for i in range(0, x.shape[0], rows):
            if keep_logits:
                with torch.enable_grad():  # the chunk's own small graph, reused by the backward
                    xc = x[i : i + rows].detach().requires_grad_(x.requires_grad)
                    zg = _scaled_logits(head, xc, temperature)
                ctx.kept.append((xc, zg))
                z = zg.detach()
            else:
                z = _scaled_logits(head, x[i : i + rows], temperature)
            col, kept = _target_columns(targets[i : i + rows], keep_ids, z.shape[-1])
            # One exp per logit for both the log-sum-exp and E_p[z] (the entropy is lse - E_p[z]).
            m = z.amax(-1, keepdim=True)
            e = torch.sub(z, m).exp_()
            total = e.sum(-1)
            lse = m[:, 0] + total.log()
            # A dropped target's logit is the TrimmedLMHead's fill (probability exp(-1e4 - lse) = 0).
            lps.append(torch.where(kept, z.gather(-1, col[:, None])[:, 0], excluded / temperature) - lse)
            lses.append(lse)
            if with_entropy:
                means.append(e.mul_(z).sum(-1) / total)
                ents.append(lse - means[-1])
        means = torch.cat(means) if with_entropy else torch.zeros(0, device=x.device)
        ctx.save_for_backward(x, targets, torch.cat(lses), means)
        ctx.head, ctx.keep_ids, ctx.temperature, ctx.rows = head, keep_ids, temperature, rows
        return torch.cat(lps), (torch.cat(ents) if with_entropy else None)

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        x, targets, lse, mean = ctx.saved_tensors
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        for k, i in enumerate(range(0, x.shape[0], ctx.rows)):
            sl = slice(i, i + ctx.rows)
            if ctx.kept:
                xc, z = ctx.kept[k]
                ctx.kept[k] = None  # freed chunk by chunk
            else:
                with torch.enable_grad():
                    xc = x[sl].detach().requires_grad_(grad_x is not None)
                    z = _scaled_logits(ctx.head, xc, ctx.temperature)
            if not z.requires_grad:
                continue
            with torch.no_grad():  # g = dL/dz = -p * (g_lp + g_ent * (z - E_p[z])) + g_lp * onehot
                zd = z.detach()
                g = torch.sub(zd, lse[sl, None]).exp_()  # p
                if g_ent is not None:
                    scale = torch.sub(zd, mean[sl, None]).mul_(g_ent[sl, None])
                    if g_lp is not None:
                        scale.add_(g_lp[sl, None])
                    g.mul_(scale)
                elif g_lp is not None:
                    g.mul_(g_lp[sl, None])
                g.neg_()
                if g_lp is not None:
                    col, kept = _target_columns(targets[sl], ctx.keep_ids, zd.shape[-1])
                    g.scatter_add_(-1, col[:, None], (g_lp[sl] * kept)[:, None])
            torch.autograd.backward(z, g)
            if grad_x is not None:
                grad_x[sl] = xc.grad
        return grad_x, None, None, None, None, None, None, None, None


def token_logprobs(
    x: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    with_entropy: bool = False,
    vocab_size: int | None = None,
    keep_ids: torch.Tensor | None = None,
):
    """Log-probs `[B, T]` of `targets` `[B, T]`, and with `with_entropy` the entropy `[B, T]`.

    `x`: hidden states `[B, T, H]` and the output `head`, or logits `[B, T, V]` with head None.
    `vocab_size`, the width of the head's output, sets the chunk (`CHUNK_ELEMENTS // width` rows);
    `keep_ids` `[K]` says which vocabulary ids the head's K columns are (the rest have logit
    `EXCLUDED_LOGIT`); None: all V, in order.
    """
    B, T = targets.shape
    flat, flat_t = x.reshape(B * T, x.shape[-1]), targets.reshape(B * T)
    rows = max(1, CHUNK_ELEMENTS // (vocab_size or x.shape[-1]))
    if (torch.is_grad_enabled() and not flat.requires_grad and isinstance(head, nn.Module)
            and any(p.requires_grad for p in head.parameters())):
        # Only the head trains (LoRA on lm_head alone): the Function is in the graph only if an
        # input needs a gradient, and its backward is what reaches the head's weights.
        flat = flat.detach().requires_grad_()
    width = vocab_size or x.shape[-1]
    # Keep the chunks' head outputs for the backward only where there will be one and they fit.
    keep_logits = (head is not None and torch.is_grad_enabled() and flat.requires_grad
                   and flat.shape[0] * width * 4 <= KEEP_LOGITS_BYTES)
    lp, ent = _ChunkedLogprobs.apply(flat, flat_t, head, keep_ids, EXCLUDED_LOGIT, temperature, rows, with_entropy,
                                     keep_logits)
    lp = lp.reshape(B, T)
    return (lp, ent.reshape(B, T)) if with_entropy else lp


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
                with model.policy.disable_adapter():
                    return response_logprobs(model.policy, *args)
            return response_logprobs(model.model, *args)
    targets = input_ids[:, -n_response:]
    if output_head(model) is not None:
        hidden = _trunk_hidden(base_trunk(model), input_ids, attention_mask, n_response)
        return _hidden_logprobs(model, hidden, targets, temperature, with_entropy)
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


def _hidden_logprobs(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                     with_entropy: bool):
    """`token_logprobs` of `model`'s trunk output `[B, T, H]` through its head (`logprob_head`)."""
    head, keep_ids, V = logprob_head(model)
    width = V if keep_ids is None else keep_ids.numel()  # what one row of the head's output holds
    return token_logprobs(hidden, targets, temperature, head, with_entropy, vocab_size=width, keep_ids=keep_ids)


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
    out = _hidden_logprobs(policy, hidden, input_ids[:, -n_response:], temperature, with_entropy)
    return (*out, values) if with_entropy else (out, values)
