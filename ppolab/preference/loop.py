"""One training loop over preference pairs, shared by DPO, ORPO and the reward model.

`train_on_pairs` is the loop itself: seeded shuffling, batches, backward, clipping, the optimizer
step and the per-step records; each trainer gives it only its loss (`step_loss`). On top of it,
`train_policy_on_pairs` is what DPO and ORPO share: dropout off in train mode, a validation split,
the best-validation checkpoint (`best/`) and the final one, like SFT.

Conventions (read them before using a trainer):

* Shuffling uses a private ``torch.Generator`` seeded with the config's ``seed``: the global RNG is
  not touched. The last batch of an epoch may be smaller.
* Metrics of a step come from its forward pass, *before* its optimizer update.
* A non-finite gradient norm raises instead of applying the update: it would destroy the weights.
* **Dropout is off** while a policy trains (`train_mode_without_dropout`). DPO compares policy
  log-probs with reference log-probs computed without dropout; random dropout masks would add
  noise that does not average out through the sigmoid (and DPO's step-0 loss would not be exactly
  log 2). ``eval()`` is NOT used for this: HF models apply gradient checkpointing only when
  ``self.training`` is True, so ``eval()`` would silently switch it off and blow up activation
  memory. The model stays in ``train()`` and every dropout probability is 0 for the duration.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from ..models.checkpoint import save_model_checkpoint
from .logprobs import check_pairs, sequence_logprobs, tokenize_pairs

__all__ = [
    "PairLoopConfig", "backward_and_step", "check_loop_config", "checked_splits", "eval_mode", "is_peft_model_instance", "model_device",
    "pair_batches", "pair_logps", "split_pairs", "train_mode_without_dropout", "train_on_pairs",
    "train_policy_on_pairs", "trainable_params",
]

StepLoss = Callable[[torch.Tensor, list], "tuple[torch.Tensor, dict]"]


@dataclasses.dataclass
class PairLoopConfig:
    """The loop settings DPOConfig and ORPOConfig share (each sets its own ``lr`` default).

    ``lr``: AdamW learning rate. ``grad_clip``: max global grad norm, ``None`` disables clipping.
    ``max_length``: per-row token budget (prompt + response), see
    :func:`~ppolab.preference.logprobs.tokenize_pairs`. ``valid_fraction``: share of the prompts
    held out for validation when the trainer gets no ``valid_pairs`` (0: none). ``save_best``: keep
    the lowest-validation-loss epoch in ``out_dir/best``.
    """

    lr: float = 5e-6
    epochs: int = 1
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    valid_fraction: float = 0.0
    save_best: bool = True

    def __post_init__(self) -> None:
        check_loop_config(self)


def check_loop_config(cfg) -> None:
    """Validation of the loop settings DPOConfig and ORPOConfig share (ValueError naming the field)."""
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {cfg.lr!r}")
    for name in ("epochs", "batch_size"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(cfg.max_length, int) or cfg.max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {cfg.max_length!r}")
    if not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an int, got {cfg.seed!r}")
    if not (isinstance(cfg.weight_decay, (int, float)) and cfg.weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay!r}")
    if cfg.grad_clip is not None and not (
        isinstance(cfg.grad_clip, (int, float)) and math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0
    ):
        raise ValueError(f"grad_clip must be None or a finite number > 0, got {cfg.grad_clip!r}")
    if not (isinstance(cfg.valid_fraction, (int, float)) and 0.0 <= cfg.valid_fraction < 1.0):
        raise ValueError(f"valid_fraction must be in [0, 1), got {cfg.valid_fraction!r}")


# --------------------------------------------------------------------------- small helpers


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("policy has no trainable parameters (requires_grad is False everywhere)")
    return params


def is_peft_model_instance(model: torch.nn.Module) -> bool:
    """True for a ``peft.PeftModel`` itself (what ``disable_adapter()`` is defined on).

    Stricter than `ppolab.models.is_peft`, which duck-types any wrapper that has an adapter.
    """
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep the core usable without it
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def train_mode_without_dropout(model: torch.nn.Module) -> Iterator[None]:
    """``train()`` mode (keeps gradient checkpointing active) with every dropout probability 0.

    Covers ``nn.Dropout*`` modules and float module attributes whose name contains "dropout"
    (functional dropout in HF attention, e.g. Llama's ``attention_dropout``). Everything is
    restored on exit, even after an exception.
    """
    was_training = model.training
    saved: list[tuple[object, str, float]] = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            saved.append((module, "p", module.p))
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and value != 0.0:
                saved.append((module, name, value))
                setattr(module, name, 0.0)
    model.train()
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)
        model.train(was_training)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the duration, original train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pair_batches(pairs: Sequence[Mapping], order: Sequence[int], batch_size: int):
    """Yield ``(indices [b] long tensor, [pairs[i] for i in indices])`` in ``order``."""
    order = list(order)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield torch.tensor(idx, dtype=torch.long), [pairs[i] for i in idx]


def pair_logps(model, tokenizer, batch: Sequence[Mapping], max_length: int, device, average: bool):
    """Score a batch's chosen and rejected responses in one ``2b`` forward; returns ``([b], [b])``."""
    enc = tokenize_pairs(tokenizer, [p["prompt"] for p in batch], [p["chosen"] for p in batch],
                         [p["rejected"] for p in batch], max_length)
    logps = sequence_logprobs(model, **{k: v.to(device) for k, v in enc.items()}, average=average)  # [2b]
    b = len(batch)
    return logps[:b], logps[b:]


def backward_and_step(loss, params, optimizer, grad_clip, step: int) -> float:
    """Backward, clip (``grad_clip`` None or 0: no clipping), update; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
    if not torch.isfinite(grad_norm):
        # Refuse to apply a NaN/inf update: it would silently destroy the weights.
        raise FloatingPointError(f"non-finite gradient norm at step {step}")
    optimizer.step()
    return float(grad_norm)


def split_pairs(pairs: Sequence[Mapping], valid_fraction: float, seed: int) -> tuple[list, list]:
    """``(train, valid)``: ``valid`` holds ``ceil(valid_fraction * P)`` of the P distinct prompts.

    Whole prompts are held out, so no prompt is in both halves; the choice is seeded (private RNG)
    and at least one prompt stays in ``train``. ``valid_fraction`` 0 returns ``(pairs, [])``.
    """
    pairs = list(pairs)
    if valid_fraction <= 0:
        return pairs, []
    prompts = list(dict.fromkeys(p["prompt"] for p in pairs))
    if len(prompts) < 2:
        raise ValueError(f"valid_fraction={valid_fraction}: needs pairs of at least 2 distinct prompts, "
                         f"got {len(prompts)}")
    n_valid = min(len(prompts) - 1, math.ceil(valid_fraction * len(prompts)))
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {prompts[i] for i in order[:n_valid]}
    return [p for p in pairs if p["prompt"] not in held], [p for p in pairs if p["prompt"] in held]


def checked_splits(pairs, valid_pairs, config) -> tuple[list, list]:
    """``(train, valid)`` checked: ``valid_pairs`` if given, else ``config.valid_fraction`` of the prompts."""
    pairs = check_pairs(pairs)
    if valid_pairs is None:
        return split_pairs(pairs, config.valid_fraction, config.seed)
    return pairs, check_pairs(valid_pairs) if valid_pairs else []


# --------------------------------------------------------------------------- the loop


def train_on_pairs(
    pairs: Sequence[Mapping],
    step_loss: StepLoss,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    grad_clip: float | None,
    desc: str,
    shown: str | None = None,
    progress: bool = True,
    start_epoch: Callable[[int], list[torch.nn.Parameter]] | None = None,
    end_epoch: Callable[[int, dict], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Optimise ``step_loss`` over ``epochs`` seeded shuffles of ``pairs``; return one record per step.

    ``step_loss(indices [b], batch)`` returns ``(loss, metrics)`` for a batch of pairs (a list of
    dicts; ``indices`` their positions in ``pairs``). Each record is ``{"step", "epoch", "loss",
    **metrics, "grad_norm"}`` (0-based step and epoch) and goes to ``on_step``. ``start_epoch(epoch)``
    may return a new list of parameters to clip (layer-wise unfreezing); ``end_epoch(epoch, last
    record)`` runs after each epoch (validation). Modes (train/eval, dropout) are the caller's.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    n = len(pairs)
    history: list[dict] = []
    step = 0
    with torch.enable_grad(), tqdm(
        total=epochs * math.ceil(n / batch_size), disable=not progress, desc=desc, dynamic_ncols=True, leave=False,
    ) as bar:
        for epoch in range(epochs):
            if start_epoch is not None:
                params = start_epoch(epoch)
            order = torch.randperm(n, generator=generator).tolist()
            for idx, batch in pair_batches(pairs, order, batch_size):
                loss, metrics = step_loss(idx, batch)
                grad_norm = backward_and_step(loss, params, optimizer, grad_clip, step)
                record = {"step": step, "epoch": epoch, "loss": float(loss.detach()), **metrics, "grad_norm": grad_norm}
                history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", **({shown: f"{record[shown]:.3f}"} if shown else {}))
                if on_step is not None:
                    on_step(record)
                step += 1
            if end_epoch is not None:
                end_epoch(epoch, history[-1])
    return history


def train_policy_on_pairs(
    policy: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Mapping],
    valid_pairs: Sequence[Mapping] | None,
    config,
    step_loss: StepLoss,
    valid_loss: Callable[[torch.Tensor, list], "tuple[torch.Tensor, torch.Tensor]"] | None,
    *,
    name: str,
    shown: str,
    out_dir: str | os.PathLike | None,
    progress: bool,
) -> list[dict]:
    """The DPO/ORPO trainer around `train_on_pairs`: AdamW on the trainable parameters, dropout off.

    With ``valid_pairs`` (``valid_loss(indices, batch) -> (losses [b], correct [b] bool)``; indices
    into ``valid_pairs``) every epoch's last record gets ``valid_loss`` and ``valid_accuracy``
    (means over the valid pairs, no gradient), and with ``out_dir`` the epoch of lowest
    ``valid_loss`` is saved to ``out_dir/best`` (when ``config.save_best``). The final policy is
    saved to ``out_dir`` itself, with ``training_log.json`` (trainer name, config, history);
    ``best/`` is carried into it.
    """
    device = model_device(policy)
    params = trainable_params(policy)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    out = Path(out_dir) if out_dir is not None else None
    saved_config = dataclasses.asdict(config)
    best = {"loss": math.inf, "saved": False}
    history: list[dict] = []

    def log_record() -> dict:
        return {"trainer": name, "config": saved_config, "history": history}

    def end_epoch(epoch: int, last: dict) -> None:
        if not valid_pairs:
            return
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for idx, batch in pair_batches(valid_pairs, range(len(valid_pairs)), config.batch_size):
                losses, ok = valid_loss(idx.to(device), batch)
                loss_sum, correct = loss_sum + float(losses.sum()), correct + int(ok.sum())
        last.update(valid_loss=loss_sum / len(valid_pairs), valid_accuracy=correct / len(valid_pairs))
        if out is not None and config.save_best and last["valid_loss"] < best["loss"]:
            best.update(loss=last["valid_loss"], saved=True)
            save_model_checkpoint(policy, tokenizer, out / "best", {"training_log.json": log_record()})

    with train_mode_without_dropout(policy):
        train_on_pairs(  # fills `history` step by step, so best/'s log holds the records up to its epoch
            pairs, step_loss, optimizer, params, epochs=config.epochs, batch_size=config.batch_size,
            seed=config.seed, grad_clip=config.grad_clip, desc=name, shown=shown, progress=progress,
            end_epoch=end_epoch, on_step=history.append,
        )
    if out is not None:
        keep = {"best": out / "best"} if best["saved"] else None
        save_model_checkpoint(policy, tokenizer, out, {"training_log.json": log_record()}, keep=keep)
    return history
