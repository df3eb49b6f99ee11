"""Translate with a causal LM, and score translations against references.

This file also owns the one text layout shared by training and generation (`format_target`,
`encode_prompt`): SFT trains on exactly the token sequence that generation later continues.

The layout of one SFT example, as token ids:

    encode_prompt(prompt)  +  encode(format_target(target))  +  [eos]
    "Translate English to Arabic:\\nHello\\nArabic:"   " مرحبا"        "</s>"

* The prompt is `ppolab.data.build_prompt(source, src_lang, tgt_lang, tokenizer)`, encoded with
  no special tokens (no BOS), exactly as `ppolab.token_attribution.SequenceGenerator` encodes
  PPO rollout prompts, so the SFT policy sees the same prompts in PPO.
* The target follows after ONE space (`TARGET_SEPARATOR`). The plain templates end with
  "Arabic:" and no trailing space because byte-level BPE attaches a word's leading space to the
  word's own token; the space therefore belongs to the target's first token, and a generated
  response starts with it (`RewardModel`'s `reward_text` expects exactly that).
* Prompt and target are encoded separately and concatenated as ids (never as one string), so
  the prompt tokens are identical at training and generation time and the boundary is exact.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from ..data import build_prompt, stops_at_newline
from ..metrics import bleu, chrf, chrf_pp
from ..models.builders import left_pad

__all__ = ["TARGET_SEPARATOR", "encode_prompt", "evaluate_translation", "format_target", "translate"]

TARGET_SEPARATOR = " "  # between the prompt's final "Arabic:" cue and the translation


def format_target(target: str) -> str:
    """The completion text the model learns to produce: `" " + target.strip()`.

    `translate` undoes it by stripping the decoded completion.
    """
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be a non-empty string, got {target!r}")
    return TARGET_SEPARATOR + target.strip()


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids, no special tokens (as PPO's SequenceGenerator encodes prompts)."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"prompt tokenizes to nothing: {prompt!r}")
    return ids


def stop_ids(tokenizer) -> list[int]:
    """EOS, plus every newline-carrying token when the prompt format puts one answer per line."""
    from ..models.tokenizer import stop_token_ids

    return stop_token_ids(tokenizer, stops_at_newline(tokenizer))


def _hf_generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_k, top_p, num_return_sequences):
    from transformers import GenerationConfig

    sampling = {}
    if do_sample:
        # transformers 5 fills top_k=None from its defaults (top-k 50); top_k=0 is what turns it off.
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        # Greedy: clear the sampling knobs so HF neither applies nor warns about them.
        sampling = dict(temperature=None, top_k=None, top_p=None)
    if stops_at_newline(tokenizer):
        # Base models prompted few-shot loop on a phrase in about 1 sentence in 5 (STACK.md): a
        # repeated 4-gram is blocked, as in most few-shot MT set-ups.
        sampling["no_repeat_ngram_size"] = 4
    return GenerationConfig(
        do_sample=do_sample, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
        eos_token_id=stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling,
    )


def _decode_until_eos(tokenizer, ids: torch.Tensor, stop_ids: list[int] | None = None) -> str:
    """Decode one row of new tokens `[T]`, stopping at the first EOS (or other stop id), stripped."""
    ids = ids.tolist()
    stops = set(stop_ids or [tokenizer.eos_token_id])
    for i, t in enumerate(ids):
        if t in stops:
            # A newline stop token may carry text before its newline (".\n"): keep that part.
            keep = t != tokenizer.eos_token_id
            ids = ids[: i + 1] if keep else ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).split("\n", 1)[0].strip()


@torch.no_grad()
def translate(
    model: nn.Module,
    tokenizer,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str = "arb",
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    progress: str | None = None,
) -> list[str] | list[list[str]]:
    """Translate `sources` (one direction) and return the decoded new text of each.

    Prompts are built with `build_prompt`, left-padded in batches of `batch_size`, and continued
    with `model.generate` (greedy unless `do_sample`; `top_k=0` and `top_p=1.0` mean off). Only
    the generated tokens are decoded, up to the first EOS, and stripped.

    Returns `list[str]` of `len(sources)`, or `list[list[str]]` (`num_return_sequences` per
    source) when `num_return_sequences > 1`. `progress`: a label shows a progress bar (sentences).
    """
    if isinstance(sources, str):
        raise TypeError("sources must be a list of strings, not a single string")
    sources = list(sources)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    if not sources:
        return []
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("translate needs a tokenizer with both a pad and an eos token")
    if num_return_sequences > 1 and not do_sample:
        raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy returns one answer)")

    gen_cfg = _hf_generation_config(
        tokenizer, max_new_tokens, do_sample, temperature, top_k, top_p, num_return_sequences
    )
    stops = stop_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts = [encode_prompt(tokenizer, build_prompt(s, src_lang, tgt_lang, tokenizer)) for s in sources]
    # Batches of similar prompt length: less padding, and a batch decodes until its longest answer
    # ends, which tracks source length. Outputs go back to the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list = [None] * len(prompts)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), desc=progress, unit="sent", disable=progress is None)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = left_pad([prompts[i] for i in chunk], tokenizer.pad_token_id)
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
            )
            new = out[:, ids.shape[1]:].cpu()  # [b * num_return_sequences, T], grouped per source
            texts = [_decode_until_eos(tokenizer, row, stops) for row in new]
            n = num_return_sequences
            for j, i in enumerate(chunk):
                outputs[i] = texts[j] if n == 1 else texts[j * n:(j + 1) * n]
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return outputs


def evaluate_translation(
    model: nn.Module,
    tokenizer,
    examples: Sequence,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    return_hypotheses: bool = False,
    progress: str | None = None,
) -> dict:
    """Greedy-translate `examples` (`TranslationExample`s, any mix of directions) and score them.

    Each direction's sources are translated together (one prompt template per batch); scores
    are corpus-level over all examples.

    Returns `{"chrf", "chrf_pp", "bleu", "n", "by_direction": {"eng->arb": {"chrf", "n"}, ...}}`,
    plus `"hypotheses"` (aligned with `examples`) when `return_hypotheses`.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_translation: examples is empty")
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[(ex.src_lang, ex.tgt_lang)].append(i)
    hyps: list[str] = [""] * len(examples)
    by_direction = {}
    for (src, tgt), idx in groups.items():
        out = translate(
            model, tokenizer, [examples[i].source for i in idx], src, tgt,
            max_new_tokens=max_new_tokens, batch_size=batch_size,
            progress=f"{progress} {src}->{tgt}" if progress else None,
        )
        for i, h in zip(idx, out):
            hyps[i] = h
        by_direction[f"{src}->{tgt}"] = {
            "chrf": chrf(out, [examples[i].target for i in idx]), "n": len(idx),
        }
    refs = [ex.target for ex in examples]
    result = {
        "chrf": chrf(hyps, refs), "chrf_pp": chrf_pp(hyps, refs), "bleu": bleu(hyps, refs),
        "n": len(examples), "by_direction": by_direction,
    }
    if return_hypotheses:
        result["hypotheses"] = hyps
    return result
