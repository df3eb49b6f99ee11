"""Direct Preference Optimization trainer.

Design decisions (read these, and the loop's conventions in :mod:`ppolab.preference.loop`):

* **Reference log-probabilities are precomputed once**, before the first update, in batches of
  ``config.batch_size`` under ``torch.no_grad()``. Source, in order of precedence:
  ``ref_model`` if given; else, for a peft policy, the policy itself inside
  ``policy.disable_adapter()`` (= the frozen base model); else the policy itself. The last case
  is the "frozen copy of the initial policy" without the copy: since nothing has been updated
  yet, the policy *is* its own initial copy, and precomputing avoids holding a second model in
  memory for the whole run. The validation pairs' reference log-probs are precomputed the same way.
* **Dropout is off** during training, in ``train()`` mode (see the loop module for why).
* Chosen and rejected rows go through the model as one ``2B`` batch (one forward pass).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .logprobs import check_pairs
from .loop import (
    PairLoopConfig,
    eval_mode,
    is_peft_model_instance,
    model_device,
    pair_batches,
    pair_logps,
    checked_splits,
    train_policy_on_pairs,
)
from .losses import DPO_LOSS_TYPES, dpo_loss

__all__ = ["DPOConfig", "reference_logps", "train_dpo"]


@dataclass
class DPOConfig(PairLoopConfig):
    """Hyper-parameters of :func:`train_dpo` (the loop's, :class:`~ppolab.preference.loop.PairLoopConfig`, and):

    ``beta``: KL strength (0.1 is the paper's default). ``label_smoothing``: cDPO flip
    probability in ``[0, 0.5)``. ``loss_type``: ``"sigmoid"`` (DPO) or ``"ipo"``. ``lr``: 5e-6
    suits full fine-tuning; LoRA usually wants ~10x more.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    lr: float = 5e-6

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        if not (0.0 <= self.label_smoothing < 0.5):
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {self.loss_type!r}")
        if self.loss_type == "ipo" and self.label_smoothing != 0.0:
            raise ValueError("label_smoothing must be 0 with loss_type='ipo'")
        super().__post_init__()


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
    device = model_device(policy)
    model = ref_model if ref_model is not None else policy
    ref_device = model_device(model)
    use_disabled_adapter = ref_model is None and is_peft_model_instance(policy)
    chosen_out, rejected_out = [], []
    ctx = policy.disable_adapter() if use_disabled_adapter else contextlib.nullcontext()
    with eval_mode(model), ctx:
        for _, batch in pair_batches(pairs, range(len(pairs)), config.batch_size):
            c, r = pair_logps(model, tokenizer, batch, config.max_length, ref_device, False)
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
    valid_pairs: Sequence[Mapping] | None = None,
) -> list[dict]:
    """Train ``policy`` in place with DPO (or IPO) on preference ``pairs``.

    Args:
        policy: causal LM (HF ``PreTrainedModel`` or peft model); its trainable parameters
            (``requires_grad``) are optimised with AdamW.
        tokenizer: HF tokenizer (needs ``eos_token_id``).
        pairs: dicts with str ``prompt``, ``chosen``, ``rejected`` (extra keys ignored).
        config: :class:`DPOConfig`.
        ref_model: optional frozen reference; see :func:`reference_logps` for the fallback.
        out_dir: if given, the policy + tokenizer are saved there at the end (atomically; a LoRA
            policy merged, its adapter in ``adapter/``), the best-validation epoch in ``best/``.
        progress: show a tqdm bar.
        valid_pairs: validation pairs; None: ``config.valid_fraction`` of ``pairs``' prompts.

    Returns:
        One dict per optimizer step: ``step, epoch, loss, chosen_rewards, rejected_rewards,
        reward_margin, reward_accuracy, policy_chosen_logps, policy_rejected_logps, grad_norm``
        (batch means; rewards are ``beta * (policy - ref)`` log-prob differences;
        ``reward_accuracy`` is the fraction of pairs with chosen reward > rejected reward). With
        validation pairs each epoch's last step also has ``valid_loss`` and ``valid_accuracy``
        (the reward accuracy on the validation pairs).
    """
    if not isinstance(config, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
    pairs, valid_pairs = checked_splits(pairs, valid_pairs, config)
    device = model_device(policy)

    # Before any update: this is what makes "policy without a ref_model" a valid reference.
    ref_c_all, ref_r_all = reference_logps(policy, tokenizer, pairs, config, ref_model=ref_model)
    if valid_pairs:
        ref_c_valid, ref_r_valid = reference_logps(policy, tokenizer, valid_pairs, config, ref_model=ref_model)

    def losses_and_rewards(idx, batch, ref_c, ref_r):
        pc, pr = pair_logps(policy, tokenizer, batch, config.max_length, device, False)
        idx = idx.to(device)
        losses, c_rew, r_rew = dpo_loss(
            pc, pr, ref_c[idx], ref_r[idx],
            beta=config.beta, label_smoothing=config.label_smoothing, loss_type=config.loss_type,
        )
        return losses, c_rew, r_rew, pc, pr

    def step_loss(idx, batch):
        losses, c_rew, r_rew, pc, pr = losses_and_rewards(idx, batch, ref_c_all, ref_r_all)
        return losses.mean(), {
            "chosen_rewards": float(c_rew.mean()),
            "rejected_rewards": float(r_rew.mean()),
            "reward_margin": float((c_rew - r_rew).mean()),
            "reward_accuracy": float((c_rew > r_rew).float().mean()),
            "policy_chosen_logps": float(pc.detach().mean()),
            "policy_rejected_logps": float(pr.detach().mean()),
        }

    def valid_loss(idx, batch):
        losses, c_rew, r_rew, _, _ = losses_and_rewards(idx, batch, ref_c_valid, ref_r_valid)
        return losses, c_rew > r_rew

    return train_policy_on_pairs(
        policy, tokenizer, pairs, valid_pairs, config, step_loss, valid_loss,
        name="dpo", shown="reward_accuracy", out_dir=out_dir, progress=progress,
    )
