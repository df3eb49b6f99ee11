"""An optional output-vocabulary trim for a task: the LM head computes only the tokens it can need.

Gemma 3's head has 262,144 rows and costs about three quarters of a 270M model's decoding time.
A translation into Arabic needs Arabic-script tokens, digits, punctuation and short Latin pieces
(names, acronyms), about 20k rows. `trim_output_vocabulary` replaces the head by one over those
rows that still returns logits over the full vocabulary, the other tokens set to
`EXCLUDED_LOGIT`, so token ids, `generate()`, log-probs and every caller stay as they are: only
the distribution is restricted to the kept tokens (their probabilities renormalise among
themselves). Input embeddings are untouched, so prompts in any script read as before.

The policy and its adapter-disabled reference share the trimmed head, so the KL between them is
measured on the same restricted distributions. The trimmed rows are a frozen copy of the head
(tied to the embeddings in Gemma), kept out of `state_dict`: a saved model is the ordinary one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# exp(-1e4) is exactly 0 in fp32/bf16/fp16, and -1e4 / temperature stays finite in fp16, so an
# excluded token has probability 0 and entropies (p * log p = 0 * -1e4) stay finite.
EXCLUDED_LOGIT = -1e4

_ARABIC = ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))
TRIMS = ("arabic",)


def _is_arabic(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _ARABIC)


def arabic_output_token_ids(tokenizer) -> list[int]:
    """Ids an Arabic translation can need: tokens made of Arabic script, digits, punctuation and
    white space; ASCII tokens of at most 3 visible characters (to spell names and acronyms); and
    every special token. On FLORES devtest Arabic these cover 99.7% of the reference's tokens."""
    from .tokenizer import token_texts

    texts = token_texts(tokenizer)
    keep = set(tokenizer.all_special_ids)
    for i, t in enumerate(texts):
        visible = t.strip()
        if not visible:
            keep.add(i)  # white space and newlines
        elif all(_is_arabic(c) or (ord(c) < 128 and not c.isalpha()) or c.isspace() for c in t):
            keep.add(i)
        elif t.isascii() and len(visible) <= 3:
            keep.add(i)
    return sorted(keep)


class TrimmedLMHead(nn.Module):
    """hidden `[..., H]` -> logits `[..., V]`: computed for `keep_ids` `[K]`, `EXCLUDED_LOGIT` elsewhere."""

    def __init__(self, weight: torch.Tensor, keep_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("keep_ids", keep_ids.to(weight.device), persistent=False)
        self.register_buffer("rows", weight.detach()[keep_ids].clone(), persistent=False)

    def kept_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden `[..., H]` -> logits of the kept ids only, `[..., K]`."""
        return F.linear(hidden, self.rows.to(hidden.dtype))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        small = self.kept_logits(hidden)
        out = small.new_full((*small.shape[:-1], self.vocab_size), EXCLUDED_LOGIT)
        return out.index_copy_(-1, self.keep_ids, small)


def trim_output_vocabulary(model: nn.Module, keep_ids) -> nn.Module:
    """Replace a causal LM's output head by a `TrimmedLMHead` over `keep_ids` (in place)."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("trim_output_vocabulary: heads with a bias are not supported")
    keep = torch.as_tensor(sorted(set(int(i) for i in keep_ids)), dtype=torch.long)
    # The config is left as it is (tied embeddings stay tied in a saved model, whose head is the
    # full one: the trimmed rows are not in the state_dict).
    model.set_output_embeddings(TrimmedLMHead(head.weight, keep, head.weight.shape[0]))
    return model


def apply_vocab_trim(model: nn.Module, tokenizer, trim: str | None) -> nn.Module:
    """`ModelConfig.vocab_trim`: None (full head) or "arabic" (`arabic_output_token_ids`)."""
    if trim is None:
        return model
    if trim != "arabic":
        raise ValueError(f"vocab_trim: unknown {trim!r}; expected None or one of {TRIMS}")
    return trim_output_vocabulary(model, arabic_output_token_ids(tokenizer))
