"""Supervised fine-tuning (SFT) of the translation policy: causal-LM loss on target tokens only.

The SFT model is PPO's starting policy and its frozen reference, so it is trained on exactly
the prompt layout PPO generates from (see `ppolab.sft.translate` for the layout).

Over-long examples are an ERROR, not a truncation: `SFTConfig.max_length` bounds prompt +
target + EOS, and an example beyond it raises a ValueError naming the example's origin
(file:line). A truncated target would teach the model to stop mid-sentence without an EOS;
a clear error lets the user raise `max_length` or clean the corpus instead.

Checkpoint layout of `out_dir`:

    out_dir/metrics.jsonl   one JSON line per epoch (rewritten from scratch at the start of a run)
    out_dir/final/          model + tokenizer (`save_pretrained`), `sft_config.json`, `history.json`
    out_dir/best/           the same, for the epoch with the best validation chrF (`save_best`)

Both folders are written atomically (`ppolab.io.atomic_dir`): a crash never leaves half a model.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, config_to_dict
from ..models.builders import left_pad, position_ids_from_mask
from ..models.checkpoint import load_model_checkpoint, save_model_checkpoint
from .translate import encode_prompt, evaluate_translation, format_target

__all__ = [
    "SFTConfig", "encode_sft_example", "collate_sft", "tokenize_sft", "sft_loss", "warmup_linear_decay",
    "train_sft", "save_sft", "load_sft",
]


@dataclass
class SFTConfig:
    """Settings of one `train_sft` run."""

    epochs: int = 10
    lr: float = 1e-3  # peak learning rate (tiny models from scratch; use ~1e-5..1e-4 for real ones)
    batch_size: int = 16  # examples per optimizer step
    warmup_ratio: float = 0.1  # fraction of all steps spent warming up linearly to `lr`
    weight_decay: float = 0.0
    max_length: int = 128  # tokens of prompt + target + EOS; longer examples are an error
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0  # shuffling order
    eval_every_epochs: int = 1  # validation every N epochs (and always after the last)
    eval_max_new_tokens: int = 64
    eval_limit: int | None = None  # validation chrF on the first N valid examples; None = all
    eval_batch_size: int = 32
    save_best: bool = True  # also keep `out_dir/best` (best validation chrF)

    def validate(self) -> "SFTConfig":
        def check(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"SFTConfig.{name}: {msg}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "eval_every_epochs", "eval_max_new_tokens", "eval_batch_size"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, "must be an int >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(isinstance(self.max_length, int) and self.max_length >= 2, "max_length", "must be an int >= 2")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        check(self.eval_limit is None or self.eval_limit >= 1, "eval_limit", "must be None or >= 1")
        return self


# ------------------------------------------------------------------------------ tokenization


def encode_sft_example(tokenizer, example, max_length: int) -> tuple[list[int], list[int]]:
    """`(prompt_ids, target_ids)` of one `TranslationExample`; target_ids ends with EOS.

    Raises ValueError naming `example.origin` when prompt + target + EOS exceeds `max_length`.
    """
    from ..data import build_prompt

    if tokenizer.eos_token_id is None:
        raise ValueError("SFT needs a tokenizer with an eos token")
    origin = getattr(example, "origin", "?")
    try:
        prompt_ids = encode_prompt(tokenizer, build_prompt(example.source, example.src_lang, example.tgt_lang, tokenizer))
        target_ids = list(tokenizer(format_target(example.target), add_special_tokens=False)["input_ids"])
    except ValueError as e:
        raise ValueError(f"example {origin}: {e}") from e
    target_ids.append(tokenizer.eos_token_id)
    n = len(prompt_ids) + len(target_ids)
    if n > max_length:
        raise ValueError(
            f"example {origin}: {n} tokens ({len(prompt_ids)} prompt + {len(target_ids)} target incl. EOS) "
            f"exceeds SFTConfig.max_length={max_length}; raise max_length or shorten/remove the example"
        )
    return prompt_ids, target_ids


def collate_sft(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad `(prompt_ids, target_ids)` rows into `[B, L]` long tensors.

    `labels_mask` is 1 exactly on target tokens (incl. EOS): prompt and padding are 0.
    """
    ids, mask = left_pad([p + t for p, t in rows], pad_id)
    labels_mask = torch.zeros_like(mask)
    L = ids.shape[1]
    for i, (_, t) in enumerate(rows):
        labels_mask[i, L - len(t):] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels_mask": labels_mask}


def tokenize_sft(tokenizer, examples: Sequence, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize `TranslationExample`s into one left-padded batch.

    Returns `input_ids`, `attention_mask`, `labels_mask`, each `[B, L]` long, `L` the longest row.
    Row layout: `[pad...] prompt " " target EOS` (see `ppolab.sft.translate`).
    """
    if not examples:
        raise ValueError("tokenize_sft: examples is empty")
    if tokenizer.pad_token_id is None:
        raise ValueError("SFT needs a tokenizer with a pad token")
    rows = [encode_sft_example(tokenizer, ex, max_length) for ex in examples]
    return collate_sft(rows, tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------- loss


def _target_nll(model: nn.Module, input_ids, attention_mask, labels_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over target positions, and their count (both 0-dim)."""
    # Targets sit at the right end (left padding): the LM head only needs the columns from the
    # earliest target token's predecessor on, which skips the (vocab-wide) head on the prompts.
    first = int(labels_mask.any(0).long().argmax())
    # (a target at column 0 has no predecessor and cannot be scored, hence the min)
    keep = min(input_ids.shape[1] - first + 1, input_ids.shape[1])
    out = model(
        input_ids=input_ids, attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask), use_cache=False, logits_to_keep=keep,
    )
    logits = out.logits[:, :-1].float()  # position t-1 predicts token t
    targets = input_ids[:, -(keep - 1):]
    weights = labels_mask[:, -(keep - 1):].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (nll.view_as(weights) * weights).sum(), weights.sum()


def sft_loss(model: nn.Module, input_ids, attention_mask, labels_mask) -> torch.Tensor:
    """Token-mean cross entropy over positions where `labels_mask` is 1 (all `[B, L]`)."""
    total, count = _target_nll(model, input_ids, attention_mask, labels_mask)
    if count == 0:
        raise ValueError("sft_loss: labels_mask has no target tokens")
    return total / count


def warmup_linear_decay(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier for 0-based optimizer `step`: linear warm-up, then linear decay.

    Warm-up gives `(step + 1) / warmup_steps`, so the first update already moves (HF's
    schedule spends step 0 at lr 0); then `(total - step) / (total - warmup)`, which is 1 at
    the end of warm-up and `1 / (total - warmup)` on the last step (never 0: no wasted step).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# ----------------------------------------------------------------------------- checkpoints
# Saving and loading live in ppolab.models.checkpoint (every trainer's layout); these are its
# names from before, kept so `from ppolab.sft import load_sft, save_sft` goes on working.
save_sft = save_model_checkpoint
load_sft = load_model_checkpoint


# -------------------------------------------------------------------------------- training


@torch.no_grad()
def _valid_loss(model, rows, pad_id, batch_size, device) -> float:
    total = count = 0.0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate_sft(rows[start:start + batch_size], pad_id).items()}
        s, n = _target_nll(model, **batch)
        total, count = total + float(s), count + float(n)
    return total / count


def train_sft(
    model: nn.Module,
    tokenizer,
    train_examples: Sequence,
    valid_examples: Sequence | None = None,
    config: SFTConfig | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Fine-tune `model` in place on `TranslationExample`s; return one record per epoch.

    Each record: `epoch`, `step`, `train_loss` (token-mean over the epoch), `lr` (of the epoch's
    last step), `valid_loss` and `valid_chrf` (None on epochs without validation or without
    `valid_examples`), `seconds` (this epoch, validation included), `elapsed`.
    Records go to `log(record)` and, with `out_dir`, to `out_dir/metrics.jsonl`; the final
    model is saved to `out_dir/final` (and the best-validation one to `out_dir/best`).
    """
    from tqdm import tqdm

    config = (config or SFTConfig()).validate()
    train_examples = list(train_examples)
    valid_examples = list(valid_examples or [])
    if not train_examples:
        raise ValueError("train_sft: train_examples is empty")
    if tokenizer.pad_token_id is None:
        raise ValueError("SFT needs a tokenizer with a pad token")
    pad_id = tokenizer.pad_token_id
    # Tokenize everything up front: a bad or over-long example fails before any training.
    train_rows = [encode_sft_example(tokenizer, ex, config.max_length) for ex in train_examples]
    valid_rows = [encode_sft_example(tokenizer, ex, config.max_length) for ex in valid_examples]
    eval_examples = valid_examples[: config.eval_limit] if config.eval_limit else valid_examples

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_sft: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_linear_decay(s, total_steps, warmup_steps)
    )
    shuffler = torch.Generator().manual_seed(config.seed)

    out = Path(out_dir) if out_dir is not None else None
    metrics_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        metrics_path = out / "metrics.jsonl"
        metrics_path.write_text("", encoding="utf-8")  # one run per file: start it afresh
    saved_config = config_to_dict(config)

    history: list[dict] = []
    best_chrf = -math.inf
    step = 0
    t_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_rows), generator=shuffler).tolist()
        nll_sum = tok_sum = 0.0
        lr_used = config.lr
        bar = tqdm(
            range(0, len(order), config.batch_size), desc=f"sft epoch {epoch}/{config.epochs}",
            disable=not progress, leave=False,
        )
        for start in bar:
            batch = collate_sft([train_rows[i] for i in order[start:start + config.batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            total, count = _target_nll(model, **batch)
            loss = total / count
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite SFT loss at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            nll_sum, tok_sum = nll_sum + float(total.detach()), tok_sum + float(count)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr_used:.2e}")
        bar.close()

        record = {
            "epoch": epoch, "step": step, "train_loss": nll_sum / tok_sum, "lr": lr_used,
            "valid_loss": None, "valid_chrf": None,
        }
        if valid_examples and (epoch % config.eval_every_epochs == 0 or epoch == config.epochs):
            model.eval()
            record["valid_loss"] = _valid_loss(model, valid_rows, pad_id, config.eval_batch_size, device)
            record["valid_chrf"] = evaluate_translation(
                model, tokenizer, eval_examples, max_new_tokens=config.eval_max_new_tokens,
                batch_size=config.eval_batch_size,
            )["chrf"]
            model.train()
        record["seconds"] = time.perf_counter() - t_epoch
        record["elapsed"] = time.perf_counter() - t_start
        history.append(record)
        if log is not None:
            log(record)
        if metrics_path is not None:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if out is not None and config.save_best and record["valid_chrf"] is not None and record["valid_chrf"] > best_chrf:
            best_chrf = record["valid_chrf"]
            save_sft(model, tokenizer, out / "best", {"sft_config.json": saved_config, "history.json": history})

    model.eval()
    if out is not None:
        save_sft(model, tokenizer, out / "final", {"sft_config.json": saved_config, "history.json": history})
    return history

