"""Sequence log-probabilities of responses and tokenization of preference pairs.

The preference trainers need, for each (prompt, response), ``log pi(response | prompt)`` –
the sum (DPO) or mean (ORPO) of per-token log-probabilities over the *response* tokens only.
Chosen and rejected responses are concatenated into one batch of ``2B`` rows so a single
forward pass scores both (half the kernel launches, and identical numerics for both halves).

Batches are LEFT-padded. Left padding shifts every real token to a different absolute index,
so the model must be given ``position_ids`` derived from the attention mask; otherwise rotary /
learned position embeddings see positions offset by the padding length and the log-probs
depend on how much padding the batch happened to need.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["check_pairs", "sequence_logprobs", "tokenize_pairs"]


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels_mask: torch.Tensor,
    average: bool = False,
) -> torch.Tensor:
    """Summed (or length-averaged) log-probabilities of the tokens marked by ``labels_mask``.

    One forward pass over the whole batch. Token ``t`` is scored by the logits at position
    ``t - 1`` (next-token prediction), so a labelled token needs a real (attended) token before
    it; the first real token of a row can never be labelled.

    Args:
        model: a causal LM returning ``.logits`` of shape ``[B, T, V]`` (HF or peft model).
        input_ids: ``[B, T]`` token ids, left-padded.
        attention_mask: ``[B, T]``, 1 for real tokens, 0 for padding.
        labels_mask: ``[B, T]``, 1 for response tokens to score, 0 elsewhere.
        average: if True, divide each row's sum by its number of labelled tokens.

    Returns:
        ``[B]`` float32 log-probabilities (computed in float32 even for bf16 models, because a
        sum of hundreds of bf16 log-probs loses the precision DPO's small margins rely on).
        Gradients flow when called under grad mode.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("labels_mask", labels_mask)):
        if t.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(input_ids.shape)}")
    attn = attention_mask.to(torch.bool)
    labels = labels_mask.to(torch.bool)
    if bool((labels & ~attn).any()):
        raise ValueError("labels_mask marks padding tokens (attention_mask is 0 there)")
    # A labelled token at t needs a real token at t-1 to be predicted from.
    has_context = torch.zeros_like(attn)
    has_context[:, 1:] = attn[:, :-1]
    if bool((labels & ~has_context).any()):
        raise ValueError(
            "labels_mask marks a token with no real token before it (position 0 or the first "
            "token after left padding); its log-probability is undefined"
        )
    target_mask = labels[:, 1:]  # [B, T-1]: which next-token predictions count
    counts = target_mask.sum(-1)  # [B]
    if bool((counts == 0).any()):
        raise ValueError("every row needs at least one labelled (response) token")

    attn_long = attn.to(torch.long)
    # Real tokens get positions 0, 1, 2, ... regardless of how much left padding precedes them;
    # pad positions get 0 (their value is irrelevant, they are masked out).
    position_ids = (attn_long.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attn_long,
        position_ids=position_ids,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:].unsqueeze(-1)  # [B, T-1, 1]
    # log_softmax(logits)[target] = logits[target] - logsumexp(logits); gathering first avoids
    # materialising a second [B, T-1, V] tensor of log-probabilities.
    token_logps = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [B, T-1]
    # torch.where, not multiplication: logits at fully-masked pad rows may be NaN in some
    # attention kernels, and NaN * 0 = NaN would poison the sum.
    token_logps = torch.where(target_mask, token_logps, torch.zeros_like(token_logps))
    total = token_logps.sum(-1)  # [B]
    if average:
        return total / counts.to(total.dtype)
    return total


def check_pairs(pairs: Sequence[Mapping]) -> list[Mapping]:
    """Validate preference pairs (dicts with string ``prompt``, ``chosen``, ``rejected``).

    Extra keys of the project's preference JSONL (``source``, ``direction``, ``chosen_score``,
    ``rejected_score``, ``strategies``, ...) are allowed and ignored. Returns the pairs as a list.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty")
    for i, p in enumerate(pairs):
        if not isinstance(p, Mapping):
            raise ValueError(f"pairs[{i}] must be a dict, got {type(p).__name__}")
        for key in ("prompt", "chosen", "rejected"):
            if key not in p:
                raise ValueError(f"pairs[{i}] is missing key {key!r}")
            if not isinstance(p[key], str):
                raise ValueError(f"pairs[{i}][{key!r}] must be a str, got {type(p[key]).__name__}")
    return pairs


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_pairs(
    tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
    add_bos: bool = False,
) -> dict[str, torch.Tensor]:
    """Build one left-padded batch of ``2B`` rows: ``B`` chosen rows, then ``B`` rejected rows.

    Row ``i`` (and ``B + i``) is ``prompt + response + [eos]``, tokenized piecewise: the
    prompt and each response are encoded separately (no special tokens) and concatenated as ids.
    Piecewise encoding guarantees the prompt tokens are identical in the chosen and rejected row
    and that the response boundary is exact (encoding the joined string can merge tokens across
    the boundary). No BOS by default, as ppolab's SFT and PPO encode prompts (a chat template
    writes its own); ``add_bos=True`` prepends the tokenizer's BOS for a model trained with one.

    Truncation to ``max_length`` (per row): the prompt is cut from the LEFT (its end, next to the
    response, matters most) down to ``max(max_length - longest response, max_length // 2)``
    tokens – the same cut for both rows of a pair – then each response is cut from the RIGHT
    (losing its eos). At least one response token always survives.

    Args:
        tokenizer: HF tokenizer with ``eos_token_id``; ``pad_token_id`` falls back to eos.
        prompts, chosen, rejected: ``B`` strings each.
        max_length: maximum row length in tokens, >= 2.

    Returns:
        dict of ``[2B, T]`` long tensors ``input_ids``, ``attention_mask`` and ``labels_mask``
        (1 on response tokens incl. eos). ``T`` is the longest row. The layout is independent
        of ``tokenizer.padding_side`` (padding is done here, on the left).
    """
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError(
            f"prompts, chosen and rejected must have equal lengths, got "
            f"{len(prompts)}, {len(chosen)}, {len(rejected)}"
        )
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bos = getattr(tokenizer, "bos_token_id", None)

    # Each row is (prompt ids, response ids); an empty response still scores its eos.
    chosen_rows: list[tuple[list[int], list[int]]] = []
    rejected_rows: list[tuple[list[int], list[int]]] = []
    for prompt, ch, rj in zip(prompts, chosen, rejected, strict=True):
        p_ids = _encode(tokenizer, prompt)
        if add_bos and bos is not None:
            p_ids = [bos] + p_ids
        if not p_ids:
            raise ValueError(
                "prompt tokenizes to nothing (and no bos token is prepended): the first "
                "response token would have no context to be scored from"
            )
        c_ids = _encode(tokenizer, ch) + [eos]
        r_ids = _encode(tokenizer, rj) + [eos]
        longest = max(len(c_ids), len(r_ids))
        prompt_budget = max(max_length - longest, max_length // 2)
        if len(p_ids) > prompt_budget:
            p_ids = p_ids[len(p_ids) - prompt_budget:]
        resp_budget = max_length - len(p_ids)
        chosen_rows.append((p_ids, c_ids[:resp_budget]))
        rejected_rows.append((p_ids, r_ids[:resp_budget]))
    rows = chosen_rows + rejected_rows

    T = max(len(p) + len(r) for p, r in rows)
    n = len(rows)
    input_ids = torch.full((n, T), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    labels_mask = torch.zeros((n, T), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        L = len(p) + len(r)
        input_ids[i, T - L:] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, T - L:] = 1
        labels_mask[i, T - len(r):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels_mask": labels_mask}
