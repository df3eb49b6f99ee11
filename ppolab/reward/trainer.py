"""Train a Bradley–Terry reward model on preference pairs.

A pair is a dict ``{"prompt", "chosen", "rejected"}`` (strings; ``prompt`` already formatted,
e.g. by :func:`ppolab.data.build_prompt`) with optional numeric ``chosen_score`` and
``rejected_score`` (e.g. a metric's scores of the two responses, used for a margin). Other keys
are ignored, so the project's preference JSONL rows can be passed as they are.

Design decisions:

* **Same text as scoring.** Each row is ``reward_text(prompt, response, eos)`` =
  ``prompt + response + eos`` tokenized as one string without special tokens – exactly what
  :meth:`RewardModel.score` feeds the model – and the reward is read at the last token (the EOS),
  where PPO reads it on a rollout. Rows longer than ``max_length`` lose tokens from the LEFT
  (the prompt's start): the EOS and the response, which carry the reward, must survive.
* **One forward per batch**: the ``B`` chosen rows and ``B`` rejected rows go through the model
  as one ``2B`` batch, so both halves see identical numerics.
* **Raw scores in the loss.** Training uses ``score_last`` (un-normalised); normalisation is an
  affine map fitted afterwards on the SFT policy's samples (:func:`normalize_reward_model`).
  Training does not touch the stored normalisation: after fine-tuning a normalised model, call
  :func:`normalize_reward_model` again (a warning says so).
* **Loss** ``mean_b -log sigmoid(r_c - r_r - m_b)`` with ``m_b = margin_from_scores *
  (chosen_score - rejected_score)`` when the pair has both scores, else 0 (Llama-2's margin:
  a clearly better response must win by more).
* **Multi-head models** are trained through their weighted combination (``head_weights``): the
  pairs carry one overall preference, so the individual heads are not separately identified.
* **Layer-wise unfreezing** (``unfreeze_schedule="top_first"``): in epoch ``e`` of ``E`` the top
  ``ceil(n_layers * (e + 1) / E)`` decoder layers train, together with what sits above them
  (final norm, head); the embeddings unfreeze last, in the final epoch. The optimizer is built
  once over every parameter that will ever train; a frozen parameter has ``grad=None`` and
  AdamW skips it entirely (no update, no weight decay), so it stays exactly as it was.
* The loop is DPO's and ORPO's (:func:`ppolab.preference.loop.train_on_pairs`): a private
  ``torch.Generator`` seeded by ``config.seed`` shuffles (the global RNG is not touched), metrics
  of a step come from its forward pass, before its update, and a non-finite gradient norm raises.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch
from torch import nn

from ..config.core import ConfigError, config_to_dict
from ..io import write_json
from ..models.builders import left_pad
from ..models.scalar import RewardModel, reward_text
from ..preference.loop import train_on_pairs
from ..preference.losses import bradley_terry_loss

__all__ = [
    "RewardTrainConfig",
    "UNFREEZE_SCHEDULES",
    "apply_unfreeze_schedule",
    "build_reward_model",
    "check_reward_pairs",
    "continue_training",
    "decoder_layers",
    "evaluate_reward_model",
    "normalize_reward_model",
    "tokenize_pairs_for_rm",
    "train_reward_model",
    "unfrozen_layer_count",
]

logger = logging.getLogger(__name__)

UNFREEZE_SCHEDULES = (None, "top_first")
HISTORY_FILE = "train_history.json"
CONFIG_FILE = "reward_train_config.json"


@dataclass
class RewardTrainConfig:
    """Hyper-parameters of :func:`train_reward_model`; validated on construction.

    ``head_hidden`` is used only when *building* a model (:func:`build_reward_model`): 0 = linear
    head, > 0 = MLP head of that width; training keeps whatever head the given model has. ``grad_clip``: max global grad norm, 0 or None = off.
    ``eval_every_epochs``: validate after every k-th epoch (and always after the last).
    ``unfreeze_schedule``: None (everything trains from the start) or ``"top_first"``.
    """

    epochs: int = 2
    lr: float = 5e-5
    batch_size: int = 16
    max_length: int = 192
    margin_from_scores: float = 0.0
    head_hidden: int = 256
    freeze_backbone: bool = False
    unfreeze_schedule: str | None = None
    # > 0: only the top `top_layers` decoder layers, the final norm and the head train (embeddings
    # and lower layers frozen): a real checkpoint's reward model on a CPU in minutes, not hours.
    top_layers: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    eval_every_epochs: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "RewardTrainConfig":
        def check(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"RewardTrainConfig.{name}: {msg}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)

        check(is_int(self.epochs) and self.epochs >= 1, "epochs", "must be an int >= 1")
        check(is_num(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        check(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "must be an int >= 1")
        check(is_int(self.max_length) and self.max_length >= 2, "max_length", "must be an int >= 2")
        check(is_num(self.margin_from_scores), "margin_from_scores", "must be a finite number")
        check(is_int(self.head_hidden) and self.head_hidden >= 0, "head_hidden", "must be an int >= 0")
        check(isinstance(self.freeze_backbone, bool), "freeze_backbone", "must be a bool")
        check(self.unfreeze_schedule in UNFREEZE_SCHEDULES, "unfreeze_schedule",
              f"must be one of {UNFREEZE_SCHEDULES}")
        check(not (self.freeze_backbone and self.unfreeze_schedule is not None), "unfreeze_schedule",
              "must be None when freeze_backbone=True (a frozen backbone never unfreezes)")
        check(is_int(self.top_layers) and self.top_layers >= 0, "top_layers", "must be an int >= 0")
        check(not (self.top_layers and (self.freeze_backbone or self.unfreeze_schedule)), "top_layers",
              "must be 0 with freeze_backbone or an unfreeze_schedule")
        check(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be a number >= 0")
        check(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip >= 0), "grad_clip",
              "must be None or a number >= 0")
        check(is_int(self.seed), "seed", "must be an int")
        check(is_int(self.eval_every_epochs) and self.eval_every_epochs >= 1, "eval_every_epochs",
              "must be an int >= 1")
        return self


# --------------------------------------------------------------------------- pairs and batches


def check_reward_pairs(pairs, name: str = "pairs", need_scores: bool = False) -> list[Mapping]:
    """Validate preference pairs and return them as a list.

    Each pair needs string ``prompt``, ``chosen`` and ``rejected``. With ``need_scores`` (a margin
    is in use), ``chosen_score``/``rejected_score``, where present, must be finite numbers.
    """
    if pairs is None:
        raise ValueError(f"{name} is None; expected a list of preference pairs")
    pairs = list(pairs)
    if not pairs:
        raise ValueError(f"{name} is empty: reward-model training needs at least one preference pair")
    for i, p in enumerate(pairs):
        if not isinstance(p, Mapping):
            raise ValueError(f"{name}[{i}] must be a dict, got {type(p).__name__}")
        for key in ("prompt", "chosen", "rejected"):
            if key not in p:
                hint = (" (feedback pairs carry source/direction: build the prompt with "
                        "ppolab.data.build_prompt first)") if key == "prompt" else ""
                raise ValueError(f"{name}[{i}] is missing key {key!r}{hint}")
            if not isinstance(p[key], str):
                raise ValueError(f"{name}[{i}][{key!r}] must be a str, got {type(p[key]).__name__}")
        if need_scores:
            for key in ("chosen_score", "rejected_score"):
                v = p.get(key)
                if v is not None and not (isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)):
                    raise ValueError(f"{name}[{i}][{key!r}] must be a finite number, got {v!r}")
    return pairs


def tokenize_pairs_for_rm(tokenizer, pairs: Sequence[Mapping], max_length: int) -> dict[str, torch.Tensor]:
    """One LEFT-padded batch of ``2B`` rows: ``B`` chosen rows, then ``B`` rejected rows.

    Row ``i`` is ``reward_text(prompt, chosen, eos)`` (= ``prompt + chosen + eos``, the string
    :meth:`RewardModel.score` scores) tokenized without special tokens; row ``B + i`` the same with
    ``rejected``. A row over ``max_length`` tokens keeps its LAST ``max_length`` tokens (the
    response and its EOS, where the reward is read).

    Returns:
        ``input_ids`` and ``attention_mask``, long tensors ``[2B, T]``, ``T`` the longest row.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if tokenizer is None:
        raise ValueError("tokenize_pairs_for_rm needs a tokenizer (the reward model has none)")
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no eos_token; the reward is read at the EOS")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("tokenize_pairs_for_rm: pairs is empty")
    eos = tokenizer.eos_token
    texts = [reward_text(p["prompt"], p["chosen"], eos) for p in pairs]
    texts += [reward_text(p["prompt"], p["rejected"], eos) for p in pairs]
    rows = [ids[-max_length:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = left_pad(rows, pad)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _margins(pairs: Sequence[Mapping], factor: float) -> torch.Tensor | None:
    """``[B]`` margins ``factor * (chosen_score - rejected_score)``, 0 where a score is missing."""
    if factor == 0:
        return None
    out = []
    for p in pairs:
        c, r = p.get("chosen_score"), p.get("rejected_score")
        out.append(factor * (float(c) - float(r)) if c is not None and r is not None else 0.0)
    return torch.tensor(out, dtype=torch.float32)


def _pair_scores(model: RewardModel, pairs: Sequence[Mapping], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(r_chosen [B], r_rejected [B])`` from one ``2B`` forward (grad if enabled)."""
    enc = tokenize_pairs_for_rm(model.tokenizer, pairs, max_length)
    dev = next(model.parameters()).device
    scores = model.score_last(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))  # [2B]
    B = len(pairs)
    return scores[:B], scores[B:]


# --------------------------------------------------------------------------- freezing


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of decoder layers (the ModuleList of ``config.num_hidden_layers``)."""
    n = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    for name in ("layers", "h", "blocks"):
        mod = getattr(backbone, name, None)
        if isinstance(mod, nn.ModuleList) and (n is None or len(mod) == n):
            return mod
    for _, mod in backbone.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return mod
    raise ValueError(f"cannot find the decoder layers of {type(backbone).__name__} for layer-wise unfreezing")


def unfrozen_layer_count(n_layers: int, epoch: int, epochs: int) -> int:
    """``ceil(n_layers * (epoch + 1) / epochs)``: how many top layers train in ``epoch`` (0-based)."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    # Integer arithmetic: float ceil could round 2 * 3 / 3 to 2.0000000001 -> 3.
    return min(n_layers, -(-n_layers * (epoch + 1) // epochs))


def apply_unfreeze_schedule(model: RewardModel, config: RewardTrainConfig, epoch: int) -> int:
    """Set ``requires_grad`` for ``epoch`` (0-based) and return how many decoder layers train.

    The head always trains. ``freeze_backbone``: nothing else. ``unfreeze_schedule=None``: all.
    ``"top_first"``: the top :func:`unfrozen_layer_count` layers plus the non-layer, non-embedding
    parameters above them (final norm); the input embeddings only in the last epoch.
    """
    for p in model.head.parameters():
        p.requires_grad_(True)
    backbone = model.backbone
    layers = decoder_layers(backbone)
    n = len(layers)
    if config.freeze_backbone:
        for p in backbone.parameters():
            p.requires_grad_(False)
        return 0
    if config.unfreeze_schedule is None and not config.top_layers:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return n
    k = min(config.top_layers, n) if config.top_layers else unfrozen_layer_count(n, epoch, config.epochs)
    layer_params = {id(p) for p in layers.parameters()}
    embed = backbone.get_input_embeddings() if hasattr(backbone, "get_input_embeddings") else None
    embed_params = {id(p) for p in embed.parameters()} if embed is not None else set()
    last_epoch = epoch == config.epochs - 1
    for name, p in backbone.named_parameters():
        if id(p) in layer_params:
            continue
        is_embedding = id(p) in embed_params or "embed" in name or name.startswith("wpe")
        p.requires_grad_((last_epoch and not config.top_layers) if is_embedding else True)
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            p.requires_grad_(i >= n - k)
    return k


def _check_trainable_trunk(model: RewardModel, config: RewardTrainConfig) -> None:
    """A 4/8-bit trunk holds integer weights that cannot take a gradient: train the head alone."""
    from ..models.builders import QuantizationError, is_quantized

    if not config.freeze_backbone and is_quantized(model.backbone):
        raise QuantizationError(
            "reward-model training would unfreeze trunk layers that are loaded in 4/8-bit "
            "(model.load_in_4bit/load_in_8bit): set reward_model.freeze_backbone=true to train the head "
            "alone, or load the reward model's base in full precision"
        )


def _optimizer(model: RewardModel, config: RewardTrainConfig) -> torch.optim.Optimizer:
    params = list(model.head.parameters()) if config.freeze_backbone else list(model.parameters())
    # No weight decay on biases and norm gains (1-D): decaying them only shrinks the output scale.
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


# --------------------------------------------------------------------------- public API


def build_reward_model(lm: nn.Module, tokenizer, config: RewardTrainConfig | None = None,
                       head_names=("reward",), head_weights=None) -> RewardModel:
    """A fresh reward model on a copy of ``lm``'s trunk, head of width ``config.head_hidden``."""
    config = config or RewardTrainConfig()
    return RewardModel.from_causal_lm(lm, tokenizer, config.head_hidden, head_names, head_weights)


@torch.no_grad()
def evaluate_reward_model(model: RewardModel, pairs, batch_size: int = 32, max_length: int = 192,
                          margin_from_scores: float = 0.0) -> dict:
    """Pairwise metrics on ``pairs``.

    Returns ``{"accuracy", "mean_margin", "loss", "n"}``: the share of pairs with ``r_c > r_r``
    (ties count as wrong), the mean raw ``r_c - r_r`` (un-normalised, the Bradley–Terry units),
    the mean Bradley–Terry loss (with the ``margin_from_scores`` margin, as in training) and the
    number of pairs.
    """
    pairs = check_reward_pairs(pairs, need_scores=margin_from_scores != 0)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        correct, margin_sum, loss_sum = 0, 0.0, 0.0
        for i in range(0, len(pairs), batch_size):
            batch = pairs[i : i + batch_size]
            rc, rr = _pair_scores(model, batch, max_length)
            m = _margins(batch, margin_from_scores)
            loss_sum += float(bradley_terry_loss(rc, rr, None if m is None else m.to(rc.device)).sum())
            correct += int((rc > rr).sum())
            margin_sum += float((rc - rr).sum())
    finally:
        model.train(was_training)
    n = len(pairs)
    return {"accuracy": correct / n, "mean_margin": margin_sum / n, "loss": loss_sum / n, "n": n}


def train_reward_model(
    model: RewardModel,
    pairs,
    valid_pairs=None,
    config: RewardTrainConfig | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``model`` in place with the Bradley–Terry loss; return the per-epoch history.

    Each history entry: ``epoch``, ``steps``, ``train_loss``, ``train_accuracy`` (means over the
    epoch's pairs, measured before each step's update), ``val_loss``, ``val_accuracy``,
    ``val_mean_margin`` (None when not validated that epoch or no ``valid_pairs``),
    ``unfrozen_layers``, ``trainable_params``, ``seconds``.

    ``log``, if given, receives ``{"kind": "step", "step", "epoch", "loss", "accuracy",
    "grad_norm"}`` after every update and ``{"kind": "epoch", **entry}`` after every epoch.
    With ``out_dir`` the model is saved there (:meth:`RewardModel.save`) followed by
    ``train_history.json`` and ``reward_train_config.json``. ``requires_grad`` flags and the
    train/eval mode are restored afterwards.
    """
    config = (config or RewardTrainConfig()).validate()
    if not isinstance(model, RewardModel):
        raise TypeError(f"model must be a RewardModel, got {type(model).__name__}")
    if model.tokenizer is None:
        raise ValueError("the reward model has no tokenizer; build it with tokenizer= (or save/load one)")
    need_scores = config.margin_from_scores != 0
    pairs = check_reward_pairs(pairs, "pairs", need_scores)
    if valid_pairs is not None:
        valid_pairs = check_reward_pairs(valid_pairs, "valid_pairs", need_scores)
    if float(model.norm_mean) != 0.0 or float(model.norm_std) != 1.0:
        logger.warning("the reward model's normalisation (mean %.4g, std %.4g) is kept through training "
                       "and will be stale afterwards: call normalize_reward_model again",
                       float(model.norm_mean), float(model.norm_std))

    _check_trainable_trunk(model, config)
    grad_flags = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    dev = next(model.parameters()).device
    history: list[dict] = []
    epoch_sums = {"loss": 0.0, "correct": 0, "steps": 0, "t0": 0.0, "unfrozen": 0, "trainable": []}

    def start_epoch(epoch: int) -> list[nn.Parameter]:
        epoch_sums.update(loss=0.0, correct=0, steps=0, t0=time.perf_counter())
        epoch_sums["unfrozen"] = apply_unfreeze_schedule(model, config, epoch)
        epoch_sums["trainable"] = [p for p in model.parameters() if p.requires_grad]
        model.train()
        return epoch_sums["trainable"]

    def step_loss(idx, batch):
        rc, rr = _pair_scores(model, batch, config.max_length)
        m = _margins(batch, config.margin_from_scores)
        losses = bradley_terry_loss(rc, rr, None if m is None else m.to(dev))  # [B]
        batch_correct = int((rc > rr).sum())
        epoch_sums["loss"] += float(losses.detach().sum())
        epoch_sums["correct"] += batch_correct
        epoch_sums["steps"] += 1
        return losses.mean(), {"accuracy": batch_correct / len(batch)}

    def on_step(record: dict) -> None:
        if log is not None:  # 1-based step: the number of updates made so far
            log({"kind": "step", "step": record["step"] + 1, "epoch": record["epoch"], "loss": record["loss"],
                 "accuracy": record["accuracy"], "grad_norm": record["grad_norm"]})

    def end_epoch(epoch: int, last: dict) -> None:
        entry = {
            "epoch": epoch, "steps": epoch_sums["steps"],
            "train_loss": epoch_sums["loss"] / len(pairs), "train_accuracy": epoch_sums["correct"] / len(pairs),
            "val_loss": None, "val_accuracy": None, "val_mean_margin": None,
            "unfrozen_layers": epoch_sums["unfrozen"],
            "trainable_params": sum(p.numel() for p in epoch_sums["trainable"]),
        }
        if valid_pairs is not None and ((epoch + 1) % config.eval_every_epochs == 0 or epoch == config.epochs - 1):
            ev = evaluate_reward_model(model, valid_pairs, config.batch_size, config.max_length,
                                       config.margin_from_scores)
            entry.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"], val_mean_margin=ev["mean_margin"])
        entry["seconds"] = time.perf_counter() - epoch_sums["t0"]
        history.append(entry)
        logger.info("reward epoch %d: %s", epoch, entry)
        if log is not None:
            log({"kind": "epoch", **entry})

    try:
        train_on_pairs(
            pairs, step_loss, _optimizer(model, config), [], epochs=config.epochs, batch_size=config.batch_size,
            seed=config.seed, grad_clip=config.grad_clip, desc="reward", progress=progress,
            start_epoch=start_epoch, end_epoch=end_epoch, on_step=on_step,
        )
    finally:
        for p in model.parameters():
            p.requires_grad_(grad_flags[id(p)])
        model.train(was_training)
    if out_dir is not None:
        out_dir = Path(out_dir)
        model.save(out_dir)  # replaces the whole folder, so the JSON files are written after it
        write_json(out_dir / HISTORY_FILE, history)
        write_json(out_dir / CONFIG_FILE, config_to_dict(config))
    return history


def continue_training(path: str | Path, pairs, valid_pairs=None, config: RewardTrainConfig | None = None,
                      **train_kwargs) -> tuple[RewardModel, list[dict]]:
    """Load a saved reward model (e.g. the cold-start one) and fine-tune it on new pairs.

    ``train_kwargs`` (``out_dir``, ``log``, ``progress``) go to :func:`train_reward_model`.
    Returns ``(model, history)``. ``out_dir=None`` saves nothing (pass ``path`` to overwrite the
    checkpoint in place; the save is atomic). The checkpoint must include its tokenizer.
    """
    model = RewardModel.load(path)
    if model.tokenizer is None:
        raise ValueError(f"{path}: the checkpoint has no tokenizer; save the reward model with one")
    history = train_reward_model(model, pairs, valid_pairs, config, **train_kwargs)
    return model, history


@torch.no_grad()
def normalize_reward_model(model: RewardModel, prompts: Sequence[str], responses: Sequence[str],
                           batch_size: int = 32) -> tuple[float, float]:
    """Fit the normalisation so ``model.score(prompts, responses)`` has mean 0 and std 1.

    ``prompts``/``responses`` should be the SFT policy's samples: PPO's rewards then start centred
    with unit scale. Uses the unbiased std (``torch.std``'s default). Returns the raw
    ``(mean, std)`` that were set.
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses differ in length: {len(prompts)} vs {len(responses)}")
    if len(prompts) < 2:
        raise ValueError(f"normalize_reward_model needs at least 2 samples, got {len(prompts)}")
    was_training = model.training
    model.eval()
    try:
        # score() applies the current normalisation; undo it to get the raw scores.
        scores = model.score(prompts, responses, batch_size=batch_size).double()
    finally:
        model.train(was_training)
    raw = scores * float(model.norm_std) + float(model.norm_mean)
    mean, std = float(raw.mean()), float(raw.std())
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 1e-12:
        raise ValueError(f"cannot normalise: raw scores have mean {mean} and std {std} "
                         "(all samples scored the same?)")
    model.set_normalization(mean, std)
    return mean, std
