"""Direct Preference Optimization trainer.

Design decisions (read these before using the trainer):

* **Reference log-probabilities are precomputed once**, before the first update, in batches of
  ``config.batch_size`` under ``torch.no_grad()``. Source, in order of precedence:
  ``ref_model`` if given; else, for a peft policy, the policy itself inside
  ``policy.disable_adapter()`` (= the frozen base model); else the policy itself. The last case
  is the "frozen copy of the initial policy" without the copy: since nothing has been updated
  yet, the policy *is* its own initial copy, and precomputing avoids holding a second model in
  memory for the whole run.
* **Dropout is off** during training. DPO compares policy log-probs against reference log-probs
  computed without dropout; random dropout masks would add noise to ``h`` that does not average
  out through the sigmoid (and the step-0 loss would not be exactly log 2). We do NOT use
  ``eval()`` for this: HF models only apply gradient checkpointing when ``self.training`` is
  True, so ``eval()`` would silently switch it off and blow up activation memory. Instead the
  model stays in ``train()`` mode and every dropout probability is set to 0 for the duration of
  training – ``nn.Dropout`` modules (incl. peft's ``lora_dropout``) and float attributes whose
  name contains "dropout" (HF attention applies e.g. ``self.attention_dropout`` functionally) –
  then restored, together with the original train/eval mode.
* Chosen and rejected rows go through the model as one ``2B`` batch (one forward pass).
* Shuffling uses a private ``torch.Generator`` seeded with ``config.seed`` – the global RNG is not
  touched. The last batch of an epoch may be smaller.
* Metrics of a step are computed from the forward pass *before* that step's optimizer update.
"""
from __future__ import annotations

from ..io import atomic_dir

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ppolab.preference.logprobs import check_pairs, sequence_logprobs, tokenize_pairs
from ppolab.preference.losses import DPO_LOSS_TYPES, dpo_loss

__all__ = ["DPOConfig", "reference_logps", "train_dpo"]


@dataclass
class DPOConfig:
    """Hyper-parameters of :func:`train_dpo`.

    ``beta``: KL strength (0.1 is the paper's default). ``label_smoothing``: cDPO flip
    probability in ``[0, 0.5)``. ``loss_type``: ``"sigmoid"`` (DPO) or ``"ipo"``. ``lr``: AdamW
    learning rate (5e-6 suits full fine-tuning; LoRA usually wants ~10x more). ``grad_clip``:
    max global grad norm, ``None`` disables clipping. ``max_length``: per-row token budget
    (prompt + response), see :func:`~ppolab.preference.logprobs.tokenize_pairs`.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    lr: float = 5e-6
    epochs: int = 1
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        if not (0.0 <= self.label_smoothing < 0.5):
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {self.loss_type!r}")
        if self.loss_type == "ipo" and self.label_smoothing != 0.0:
            raise ValueError("label_smoothing must be 0 with loss_type='ipo'")
        _check_common(self)


def _check_common(cfg) -> None:
    """Validation shared by DPOConfig and ORPOConfig."""
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


# --------------------------------------------------------------------------- shared trainer helpers
# (also used by ppolab.preference.orpo)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("policy has no trainable parameters (requires_grad is False everywhere)")
    return params


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep the core usable without it
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def _train_mode_without_dropout(model: torch.nn.Module) -> Iterator[None]:
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
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the duration, original train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _batches(pairs: Sequence[Mapping], order: Sequence[int], batch_size: int):
    """Yield ``(indices [b] long tensor, prompts, chosen, rejected)`` in ``order``."""
    order = list(order)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield (
            torch.tensor(idx, dtype=torch.long),
            [pairs[i]["prompt"] for i in idx],
            [pairs[i]["chosen"] for i in idx],
            [pairs[i]["rejected"] for i in idx],
        )


def _pair_logps(model, tokenizer, prompts, chosen, rejected, max_length, device, average):
    """Score chosen and rejected in one ``2b`` forward; returns ``([b], [b])``."""
    batch = tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length)
    batch = {k: v.to(device) for k, v in batch.items()}
    logps = sequence_logprobs(model, **batch, average=average)  # [2b]
    b = len(prompts)
    return logps[:b], logps[b:]


def _backward_and_step(loss, params, optimizer, grad_clip, step: int) -> float:
    """Backward, clip, and apply the update; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = grad_clip if grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not torch.isfinite(grad_norm):
        # Refuse to apply a NaN/inf update: it would silently destroy the weights.
        raise FloatingPointError(f"non-finite gradient norm at step {step}")
    optimizer.step()
    return float(grad_norm)


def _record(history: list, bar, metrics: dict, shown: str) -> None:
    """Keep the step's metrics and show the loss and `shown` on the progress bar."""
    history.append(metrics)
    bar.update(1)
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", **{shown: f"{metrics[shown]:.3f}"})


def _save_atomic(model, tokenizer, out_dir, record: dict) -> Path:
    """``save_pretrained`` model and tokenizer into a temp dir next to ``out_dir``, then rename.

    A crash mid-save leaves ``out_dir`` untouched (only a hidden temp dir). If ``out_dir`` exists
    it is replaced: old moved aside, new renamed in, old deleted (two renames, so there is a
    moment with no ``out_dir``, but never a half-written one). ``record`` goes to
    ``training_log.json``.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps(record, indent=2))
    return out


# --------------------------------------------------------------------------- DPO


@torch.no_grad()
def reference_logps(
    policy: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Mapping],
    config: DPOConfig,
    ref_model: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reference log-probs of every pair's chosen and rejected response.

    Source: ``ref_model`` if given; else ``policy`` with its adapter disabled if it is a peft
    model; else ``policy`` as it is now (call before training). Computed in eval mode, in pair
    order, in batches of ``config.batch_size``.

    Returns:
        ``(chosen [N], rejected [N])`` float32 tensors on the policy's device.
    """
    pairs = check_pairs(pairs)
    device = _model_device(policy)
    model = ref_model if ref_model is not None else policy
    model_device = _model_device(model)
    use_disabled_adapter = ref_model is None and _is_peft(policy)
    chosen_out, rejected_out = [], []
    ctx = policy.disable_adapter() if use_disabled_adapter else contextlib.nullcontext()
    with _eval_mode(model), ctx:
        for _, prompts, ch, rj in _batches(pairs, range(len(pairs)), config.batch_size):
            c, r = _pair_logps(model, tokenizer, prompts, ch, rj, config.max_length, model_device, False)
            chosen_out.append(c.to(device))
            rejected_out.append(r.to(device))
    return torch.cat(chosen_out), torch.cat(rejected_out)


def train_dpo(
    policy: torch.nn.Module,
    tokenizer,
    pairs: Sequence[Mapping],
    config: DPOConfig,
    ref_model: torch.nn.Module | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``policy`` in place with DPO (or IPO) on preference ``pairs``.

    Args:
        policy: causal LM (HF ``PreTrainedModel`` or peft model); its trainable parameters
            (``requires_grad``) are optimised with AdamW.
        tokenizer: HF tokenizer (needs ``eos_token_id``).
        pairs: dicts with str ``prompt``, ``chosen``, ``rejected`` (extra keys ignored).
        config: :class:`DPOConfig`.
        ref_model: optional frozen reference; see :func:`reference_logps` for the fallback.
        out_dir: if given, ``save_pretrained`` policy + tokenizer there at the end (atomically).
        progress: show a tqdm bar.

    Returns:
        One dict per optimizer step: ``step, epoch, loss, chosen_rewards, rejected_rewards,
        reward_margin, reward_accuracy, policy_chosen_logps, policy_rejected_logps, grad_norm``
        (batch means; rewards are ``beta * (policy - ref)`` log-prob differences;
        ``reward_accuracy`` is the fraction of pairs with chosen reward > rejected reward).
    """
    if not isinstance(config, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
    pairs = check_pairs(pairs)
    device = _model_device(policy)
    params = _trainable_params(policy)

    # Before any update: this is what makes "policy without a ref_model" a valid reference.
    ref_c_all, ref_r_all = reference_logps(policy, tokenizer, pairs, config, ref_model=ref_model)

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(pairs)
    total_steps = config.epochs * math.ceil(n / config.batch_size)
    history: list[dict] = []
    step = 0
    with _train_mode_without_dropout(policy), torch.enable_grad(), tqdm(
        total=total_steps, disable=not progress, desc="dpo", dynamic_ncols=True
    ) as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for idx, prompts, ch, rj in _batches(pairs, order, config.batch_size):
                pc, pr = _pair_logps(policy, tokenizer, prompts, ch, rj, config.max_length, device, False)
                idx = idx.to(device)
                losses, c_rew, r_rew = dpo_loss(
                    pc, pr, ref_c_all[idx], ref_r_all[idx],
                    beta=config.beta, label_smoothing=config.label_smoothing, loss_type=config.loss_type,
                )
                loss = losses.mean()
                grad_norm = _backward_and_step(loss, params, optimizer, config.grad_clip, step)
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(loss.detach()),
                    "chosen_rewards": float(c_rew.mean()),
                    "rejected_rewards": float(r_rew.mean()),
                    "reward_margin": float((c_rew - r_rew).mean()),
                    "reward_accuracy": float((c_rew > r_rew).float().mean()),
                    "policy_chosen_logps": float(pc.detach().mean()),
                    "policy_rejected_logps": float(pr.detach().mean()),
                    "grad_norm": grad_norm,
                }
                _record(history, bar, metrics, "reward_accuracy")
                step += 1

    if out_dir is not None:
        _save_atomic(
            policy, tokenizer, out_dir,
            {"trainer": "dpo", "config": dataclasses.asdict(config), "history": history},
        )
    return history
