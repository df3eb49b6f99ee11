"""BERTScore-style similarity from any local transformer's contextual embeddings.

For a hypothesis/reference pair, each token is embedded by the model (hidden
states of one layer), every hypothesis token is matched greedily to its most
cosine-similar reference token and vice versa:

    P = mean over hypothesis tokens of max_j cos(h_i, r_j)     (precision)
    R = mean over reference tokens  of max_i cos(h_i, r_j)     (recall)
    F = 2 P R / (P + R)

as in BERTScore (Zhang et al., 2020), without idf weighting or baseline
rescaling (both need corpus statistics this library does not ship). Special
tokens (BOS/EOS/CLS/SEP) are left out of the matching, as in BERTScore.

Cosines can be negative (mostly with untrained or oddly-trained encoders); the
harmonic mean is meaningless there, so when P or R is <= 0 the score is
min(P, R) instead. That keeps F continuous, symmetric in (hyp, ref) and in
[-1, 1]; for P, R > 0 it is exactly BERTScore's F1 in (0, 1].

Empty strings: if both sides have no content tokens the pair scores 1.0 (they
are identical); if only one side is empty it scores 0.0.

Any encoder or decoder-only model works (BERT, XLM-R, Llama, Qwen, ...); for
encoder-decoder models (T5, mT5, NLLB) the encoder is used. Sequences are
padded on the right by us (no pad token needed, and causal models keep their
position ids), and padding is masked both in attention and in matching, so a
pair's score does not depend on what else is in the batch.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .sacre import _clean

__all__ = ["EmbeddingSimilarity"]


class EmbeddingSimilarity:
    """BERTScore-like F1 between hypotheses and references.

    model_path_or_model: a local model folder (loaded with
        ``transformers.AutoModel.from_pretrained``; its tokenizer with
        ``AutoTokenizer``) or an already-built ``torch.nn.Module``.
    tokenizer: required when a model object is passed; overrides the folder's otherwise.
    layer: which hidden state to use, indexing ``outputs.hidden_states``
        (0 = embedding layer, -1 = last layer).
    batch_size: pairs per forward pass (each pass encodes 2 * batch_size texts).
    max_length: texts are truncated to this many tokens.
    device: where to run; default is where the model's parameters are.
    """

    def __init__(
        self,
        model_path_or_model: str | os.PathLike | torch.nn.Module,
        tokenizer: Any = None,
        layer: int = -1,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model_path_or_model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("a tokenizer is required when passing a model object")
            model = model_path_or_model
        else:
            from transformers import AutoModel, AutoTokenizer

            path = os.fspath(model_path_or_model)
            if not os.path.isdir(path):
                # Only local folders: a Hub name would mean a download.
                raise FileNotFoundError(f"embedding model folder not found: {path} (ppolab never downloads models)")
            model = AutoModel.from_pretrained(path)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)

        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            model = model.get_encoder()
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layer = layer
        self.batch_size = batch_size
        self.max_length = max_length
        try:
            self.device = torch.device(device) if device is not None else next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        pad = getattr(tokenizer, "pad_token_id", None)
        # Any id works for padding since padded positions are masked; fall back to 0.
        self._pad_id = pad if pad is not None else 0

    # ------------------------------------------------------------------ encode

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids, attention mask, and a mask of content (non-special) tokens."""
        enc = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
        )
        ids_list, special_list = enc["input_ids"], enc["special_tokens_mask"]
        width = max(1, max(len(ids) for ids in ids_list))
        n = len(texts)
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        content = torch.zeros((n, width), dtype=torch.bool)
        for i, (row, special) in enumerate(zip(ids_list, special_list)):
            k = len(row)
            if k:
                ids[i, :k] = torch.tensor(row, dtype=torch.long)
                attn[i, :k] = 1
                content[i, :k] = torch.tensor(special, dtype=torch.bool).logical_not()
        if (attn.sum(1) == 0).any():
            # A text with no tokens at all (empty string, tokenizer without
            # specials) still needs one attended position for the model to run;
            # it is not content, so it never takes part in matching.
            attn[:, 0] = 1
        return ids, attn, content

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-normalised token embeddings (n, L, d) in float32, and the content mask (n, L)."""
        ids, attn, content = self._tokenize(texts)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            output_hidden_states=True,
            return_dict=True,
        )
        hidden_states = getattr(out, "hidden_states", None)
        if hidden_states is None:
            raise ValueError(f"{type(self.model).__name__} returned no hidden_states; use an encoder or causal LM")
        try:
            h = hidden_states[self.layer]
        except IndexError:
            raise ValueError(
                f"layer={self.layer} out of range: the model has {len(hidden_states)} hidden states "
                "(embeddings + one per layer)"
            ) from None
        h = torch.nn.functional.normalize(h.float(), dim=-1)
        return h, content.to(h.device)

    # ------------------------------------------------------------------- score

    @staticmethod
    def _f1(h: torch.Tensor, hmask: torch.Tensor, r: torch.Tensor, rmask: torch.Tensor) -> torch.Tensor:
        """Greedy-matching F1 for a batch of pairs; see the module docstring for the rules."""
        sim = torch.bmm(h, r.transpose(1, 2))  # (B, Lh, Lr) cosines
        valid = hmask[:, :, None] & rmask[:, None, :]
        sim = sim.masked_fill(~valid, float("-inf"))
        n_h = hmask.sum(1)
        n_r = rmask.sum(1)
        # Rows/columns with no valid partner give -inf maxima; zero them before summing.
        best_for_h = sim.max(dim=2).values.masked_fill(~hmask, 0.0)
        best_for_r = sim.max(dim=1).values.masked_fill(~rmask, 0.0)
        p = best_for_h.sum(1) / n_h.clamp(min=1)
        r_ = best_for_r.sum(1) / n_r.clamp(min=1)
        positive = (p > 0) & (r_ > 0)
        f = torch.where(positive, 2 * p * r_ / (p + r_).clamp(min=1e-12), torch.minimum(p, r_))
        # Empty sides: both empty -> identical -> 1; one empty -> nothing matches -> 0.
        f = torch.where((n_h == 0) | (n_r == 0), ((n_h == 0) & (n_r == 0)).float(), f)
        return f.clamp(-1.0, 1.0)

    def score(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        """F1 similarity of each (hypothesis, reference) pair, in [-1, 1] (identical strings: 1.0)."""
        hyps, refs = _clean(hyps, refs)  # validated and stripped
        scores: list[float] = []
        for start in range(0, len(hyps), self.batch_size):
            hb = hyps[start : start + self.batch_size]
            rb = refs[start : start + self.batch_size]
            # One forward pass for both sides: masks make this equivalent to two.
            emb, mask = self._embed(hb + rb)
            b = len(hb)
            scores.extend(self._f1(emb[:b], mask[:b], emb[b:], mask[b:]).tolist())
        return scores

    def __repr__(self) -> str:
        return f"EmbeddingSimilarity(model={type(self.model).__name__}, layer={self.layer}, batch_size={self.batch_size})"
