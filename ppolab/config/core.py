"""The three settings objects of a PPO run: what model, how to sample, how to optimise."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserError  # no imports of its own (ppolab.io imports it too)
from ..io import write_json  # a leaf helper whose only import of ours is ppolab.errors


class ConfigError(UserError):
    """A setting is out of range or unknown; the message names the field."""


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{name}: {msg}")


@dataclass
class ModelConfig:
    """Which models play policy, reference, value and reward.

    `policy_path=None` builds a tiny model locally from `arch`/`n_layers`/`hidden_size`
    (no download); a path loads a real checkpoint with `from_pretrained(path)`. A tiny model's
    vocabulary is its tokenizer's (`len(tokenizer)`), so it has no setting here.
    """

    policy_path: str | None = None  # None: tiny model built offline from the fields below
    reward_path: str | None = None  # None: the caller supplies a reward (model or callable)
    arch: str = "gemma2"  # tiny-model architecture: "gemma2" or "llama"
    n_layers: int = 2
    hidden_size: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    lora: bool = False  # LoRA policy; the reference is then the base with the adapter off
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0  # dropout stays off in PPO (Huang et al. 2024)
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # The value model in the pipeline's PPO stages: "shared" = a head on the policy's own trunk,
    # "policy" = a copy of the policy's trunk + fresh head, "reward" = a copy of the reward model
    # (trunk and head, its normalisation folded in). See ppolab.models.build_value_model.
    value_init: str = "reward"
    value_head_hidden: int = 0  # fresh value heads ("shared", "policy"): 0 linear, >0 MLP of this width
    dtype: str = "float32"  # "float32", "bfloat16" or "float16"
    # bitsandbytes (extra "quant"), on the CPU or a CUDA GPU, quantized as the checkpoint loads:
    # a LoRA policy trains its adapter on the frozen 4/8-bit base (QLoRA); reward models load alike.
    load_in_4bit: bool = False
    load_in_8bit: bool = False  # LLM.int8
    bnb_4bit_quant_type: str = "nf4"  # "nf4" (QLoRA's NormalFloat) or "fp4"
    bnb_4bit_use_double_quant: bool = False  # also quantize the block scales (~0.4 bit/param less)
    gradient_checkpointing: bool = False
    # None: the full output head. "arabic": the head computes only tokens an Arabic translation can
    # need (ppolab.models.vocab_trim), ~13x fewer rows for Gemma 3's 262k vocabulary.
    vocab_trim: str | None = None
    # Under torchrun (world size > 1): "fsdp" shards every model with FSDP2 (ppolab.distributed),
    # "none" keeps a whole replica of each on every rank; None: "fsdp" when the world size is > 1.
    sharding: str | None = None
    # None: parameters as `dtype` says. "bf16" (with sharding "fsdp"): FSDP2 computes in bfloat16
    # parameters and reduces gradients in float32; the sharded master weights stay as loaded.
    mixed_precision: str | None = None
    seed: int = 0

    def validate(self) -> "ModelConfig":
        c = "ModelConfig"
        _check(self.arch in ("gemma2", "llama"), c, "arch", f"must be 'gemma2' or 'llama', got {self.arch!r}")
        for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "intermediate_size"):
            _check(getattr(self, name) >= 1, c, name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.hidden_size % self.n_heads == 0, c, "hidden_size", "must be divisible by n_heads")
        _check(self.n_heads % self.n_kv_heads == 0, c, "n_kv_heads", "must divide n_heads")
        _check(self.lora_r >= 1, c, "lora_r", f"must be >= 1, got {self.lora_r}")
        _check(0.0 <= self.lora_dropout < 1.0, c, "lora_dropout", "must be in [0, 1)")
        _check(self.value_init in ("shared", "policy", "reward"), c, "value_init",
               f"must be 'shared', 'policy' or 'reward', got {self.value_init!r}")
        _check(self.value_head_hidden >= 0, c, "value_head_hidden", "must be >= 0")
        _check(self.dtype in ("float32", "bfloat16", "float16"), c, "dtype", f"unknown dtype {self.dtype!r}")
        _check(not (self.load_in_4bit and self.load_in_8bit), c, "load_in_4bit", "4-bit and 8-bit are exclusive")
        _check(self.bnb_4bit_quant_type in ("nf4", "fp4"), c, "bnb_4bit_quant_type",
               f"must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}")
        _check(self.vocab_trim in (None, "arabic"), c, "vocab_trim", f"must be null or 'arabic', got {self.vocab_trim!r}")
        _check(self.sharding in (None, "none", "fsdp"), c, "sharding",
               f"must be null, 'none' or 'fsdp', got {self.sharding!r}")
        _check(self.mixed_precision in (None, "bf16"), c, "mixed_precision",
               f"must be null or 'bf16', got {self.mixed_precision!r}")
        return self


@dataclass
class GenerationConfig:
    """How rollouts are sampled. Log-probs are of the temperature-scaled, untruncated distribution."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    max_prompt_length: int = 256  # longer prompts are an error, not silently truncated
    stop_at_eos: bool = True  # False samples exactly max_new_tokens (benchmarks)
    # Few-shot prompts of base models put one answer per line: a token containing a newline then
    # ends the response as EOS does (masked after it, `has_eos` true, the text cut before it).
    stop_at_newline: bool = False
    # The rollout's policy log-probs: taken from the sampling loop's logits (True), or recomputed by
    # one more policy forward over prompt + response (False). None: taken at sampling when the logits
    # are fp32, where the two agree to ~1e-6; recomputed in bf16/fp16, where cached decoding and a
    # full forward round differently and the first PPO ratio would start away from 1.
    logprobs_from_sampling: bool | None = None
    # Sample from a copy of a LoRA policy with the adapter merged into its weights (one more copy of
    # the base weights; no adapter matmuls per decoded token), refreshed before every rollout. The
    # rollout's log-probs stay the LoRA policy's (to fp32 rounding); the reference is unchanged.
    merged_lora_sampling: bool = False
    # None: sample from the policy's own weights. "int8" / "fp16": from a copy whose linear layers hold
    # int8 / fp16 weights (CPU; ppolab.models.quantized_sampler), refreshed before every rollout. The rollout's `logprobs`
    # are then the policy's, recomputed; `sampler_logprobs` the copy's (see PPOConfig.rollout_correction).
    sampler_quantization: str | None = None
    # The decoding loop: "eager" (a KV cache that grows by one column per token) or "static" (one
    # cache preallocated for the batch and prompt + max_new_tokens, fixed shapes every step, the step
    # captured as a CUDA graph on a GPU; a LoRA policy then samples from a merged copy, as with
    # merged_lora_sampling). Same tokens and log-probs where the arithmetic is the same
    # (ppolab/token_attribution/static_cache.py).
    engine: str = "eager"

    def validate(self) -> "GenerationConfig":
        c = "GenerationConfig"
        _check(self.max_new_tokens >= 1, c, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature > 0, c, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.top_k >= 0, c, "top_k", f"must be >= 0, got {self.top_k}")
        _check(0.0 < self.top_p <= 1.0, c, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.max_prompt_length >= 1, c, "max_prompt_length", "must be >= 1")
        _check(self.logprobs_from_sampling in (None, True, False), c, "logprobs_from_sampling",
               f"must be true, false or null, got {self.logprobs_from_sampling!r}")
        _check(isinstance(self.merged_lora_sampling, bool), c, "merged_lora_sampling",
               f"must be true or false, got {self.merged_lora_sampling!r}")
        _check(self.sampler_quantization in (None, "int8", "fp16"), c, "sampler_quantization",
               f"must be null, 'int8' or 'fp16', got {self.sampler_quantization!r}")
        _check(not (self.sampler_quantization and self.logprobs_from_sampling), c, "logprobs_from_sampling",
               "true would make PPO's ratio start from the quantised sampler's log-probs: with "
               "sampler_quantization the policy's are recomputed (leave it null)")
        _check(self.engine in ("eager", "static"), c, "engine", f"must be 'eager' or 'static', got {self.engine!r}")
        return self


@dataclass
class PPOConfig:
    """The optimisation settings of one `PPOTrainer.ppo_step`.

    Defaults follow Huang et al. (2024) "The N+ Implementation Details of RLHF with PPO".
    """

    batch_size: int = 16  # rollouts per ppo_step
    minibatch_size: int = 4  # rollouts per optimizer step
    micro_batch_size: int = 0  # rollouts per forward/backward; 0 = minibatch_size (no accumulation)
    ppo_epochs: int = 2
    lr: float = 1e-5
    value_lr: float = 0.0  # 0 = same as lr
    weight_decay: float = 0.0
    adam_eps: float = 1e-5  # CleanRL's choice; PyTorch's 1e-8 is less stable for PPO
    max_grad_norm: float = 1.0  # 0 disables clipping
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    adaptive_kl: bool = False
    kl_target: float = 6.0  # per-sequence KL target of the adaptive controller
    kl_horizon: int = 10000
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = None  # subtracted from the score when no EOS was generated
    # Research switches (ppolab.advantage, ppolab.ppo.aggregate_loss; see PPOTrainer.make_experience).
    advantage_estimator: str = "gae"  # "gae", "grpo", "dr_grpo", "rloo" or "reinforce_pp"
    group_size: int = 1  # samples per prompt: the trainer repeats each prompt group_size times
    loss_aggregation: str = "token-mean"  # or "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    kl_in: str = "reward"  # "reward": -kl_coef * KL in the rewards; "loss": kl_loss_coef * kl_loss in the loss
    kl_loss_coef: float = 0.001  # verl's default
    kl_loss_estimator: str = "k3"  # k3's gradient pulls towards the reference; k1's is 0 in expectation
    clip_eps_high: float | None = None  # upper clip (clip-higher, DAPO); None = clip_eps
    dual_clip: float | None = None  # > 1: cap the loss of negative-advantage tokens at -dual_clip * A
    # Sampler-trainer mismatch (ppolab.ppo.rollout_correction): "none", "tis" (weight each token's
    # policy loss by min(pi_old / pi_sampler, cap)) or "mis" (drop tokens or sequences over the cap),
    # per token or per sequence (the ratio is then the product over the response).
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0
    rollout_correction_level: str = "token"
    seed: int = 0

    def validate(self) -> "PPOConfig":
        c = "PPOConfig"
        _check(self.batch_size >= 1, c, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.minibatch_size >= 1, c, "minibatch_size", f"must be >= 1, got {self.minibatch_size}")
        _check(
            self.batch_size % self.minibatch_size == 0, c, "batch_size",
            f"{self.batch_size} is not divisible by minibatch_size {self.minibatch_size}",
        )
        micro = self.micro_batch_size or self.minibatch_size
        _check(micro >= 1, c, "micro_batch_size", "must be >= 0")
        _check(
            self.minibatch_size % micro == 0, c, "minibatch_size",
            f"{self.minibatch_size} is not divisible by micro_batch_size {micro}",
        )
        _check(self.ppo_epochs >= 1, c, "ppo_epochs", "must be >= 1")
        _check(self.lr > 0, c, "lr", f"must be > 0, got {self.lr}")
        _check(self.value_lr >= 0, c, "value_lr", "must be >= 0")
        _check(self.clip_eps > 0, c, "clip_eps", f"must be > 0, got {self.clip_eps}")
        _check(self.value_clip_eps > 0, c, "value_clip_eps", f"must be > 0, got {self.value_clip_eps}")
        _check(0.0 <= self.gamma <= 1.0, c, "gamma", f"must be in [0, 1], got {self.gamma}")
        _check(0.0 <= self.lam <= 1.0, c, "lam", f"must be in [0, 1], got {self.lam}")
        _check(self.kl_coef >= 0, c, "kl_coef", "must be >= 0")
        _check(self.kl_estimator in ("k1", "k2", "k3"), c, "kl_estimator", "must be k1, k2 or k3")
        _check(self.kl_target > 0, c, "kl_target", "must be > 0")
        _check(self.kl_horizon >= 1, c, "kl_horizon", "must be >= 1")
        _check(self.max_grad_norm >= 0, c, "max_grad_norm", "must be >= 0")
        _check(self.vf_coef >= 0, c, "vf_coef", "must be >= 0")
        self._validate_research_switches()
        return self

    def _validate_research_switches(self) -> None:
        c = "PPOConfig"
        _check(self.advantage_estimator in ESTIMATORS, c, "advantage_estimator",
               f"must be one of {ESTIMATORS}, got {self.advantage_estimator!r}")
        _check(isinstance(self.group_size, int) and self.group_size >= 1, c, "group_size",
               f"must be an int >= 1, got {self.group_size!r}")
        if self.advantage_estimator in GROUP_ESTIMATORS:
            _check(self.group_size >= 2, c, "group_size",
                   f"{self.advantage_estimator!r} compares samples of one prompt: needs group_size >= 2, "
                   f"got {self.group_size}")
        _check(self.batch_size % self.group_size == 0, c, "batch_size",
               f"{self.batch_size} is not a multiple of group_size {self.group_size} (whole groups per batch)")
        _check(self.loss_aggregation in AGGREGATIONS, c, "loss_aggregation",
               f"must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}")
        _check(self.kl_in in ("reward", "loss"), c, "kl_in", f"must be 'reward' or 'loss', got {self.kl_in!r}")
        _check(self.kl_loss_coef >= 0, c, "kl_loss_coef", "must be >= 0")
        _check(self.kl_loss_estimator in ("k1", "k2", "k3"), c, "kl_loss_estimator", "must be k1, k2 or k3")
        _check(not (self.adaptive_kl and self.kl_in == "loss"), c, "adaptive_kl",
               "steers the reward penalty's coefficient: not with kl_in='loss'")
        _check(self.clip_eps_high is None or self.clip_eps_high > 0, c, "clip_eps_high",
               f"must be > 0 (or null), got {self.clip_eps_high}")
        _check(self.dual_clip is None or self.dual_clip > 1, c, "dual_clip",
               f"must be > 1 (or null), got {self.dual_clip}")
        _check(self.rollout_correction in ("none", "tis", "mis"), c, "rollout_correction",
               f"must be 'none', 'tis' or 'mis', got {self.rollout_correction!r}")
        # >= 1: with identical sampler and trainer (ratio 1) a correction must change nothing.
        _check(isinstance(self.rollout_correction_cap, (int, float)) and 1.0 <= self.rollout_correction_cap < math.inf,
               c, "rollout_correction_cap", f"must be a finite number >= 1, got {self.rollout_correction_cap!r}")
        _check(self.rollout_correction_level in ("token", "sequence"), c, "rollout_correction_level",
               f"must be 'token' or 'sequence', got {self.rollout_correction_level!r}")

    @property
    def critic_free(self) -> bool:
        """True when the advantage needs no value model (every estimator but GAE)."""
        return self.advantage_estimator != "gae"

    @property
    def effective_value_lr(self) -> float:
        return self.value_lr or self.lr


ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp")
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")  # baselines from the other samples of the prompt
# ppolab.ppo.AGGREGATIONS, repeated here because config imports nothing of ours (checked by a test).
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict:
    """A plain, JSON-safe dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type[T], data: dict) -> T:
    """Build and validate `cls` from a dict; unknown keys are an error naming them."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        # JSON has no tuples; restore them where the default is one
        default = names[k].default
        kwargs[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
    obj = cls(**kwargs)
    return obj.validate()


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write a config (or any JSON-safe object) atomically."""
    write_json(path, config_to_dict(obj) if dataclasses.is_dataclass(obj) else obj)


def load_json(path: str | os.PathLike, cls: type[T] | None = None) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    return config_from_dict(cls, data) if cls is not None else data
