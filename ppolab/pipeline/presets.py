"""Named settings for the whole loop. A preset is a plain nested dict of the settings that differ
from the dataclass defaults, read by the same strict loader as `--config` files and `--set`
(`ppolab.pipeline.config.config_from_dict`); files and flags override it."""
from __future__ import annotations

import copy

from ..config import ConfigError
from .config import PipelineConfig, config_from_dict, merge

# cpu-test: the embedded default. Tiny Llama-style model, tokenizer trained on the shipped corpus,
# sized so that the whole loop (SFT -> synth -> RM -> PPO -> feedback -> RM -> PPO) fits in
# about 20 minutes on 2 CPU cores.
CPU_TEST = {
    "seed": 0,
    "device": "cpu",
    "threads": 1,  # torch intra-op threads: tiny models gain little from a 2nd, and lose 10x when the CPU is busy
    "tokenizer": {"vocab_size": 2000},
    "model": {"arch": "llama", "n_layers": 3, "hidden_size": 192, "n_heads": 4, "n_kv_heads": 2,
              "intermediate_size": 512, "max_position_embeddings": 256, "lora": False,
              "value_init": "reward"},
    "prompt": {"format": None},  # None: the model's own (plain for tiny models; see ppolab.data.templates)
    # PPO rollouts and the policy samples the rewards are normalised on (and feedback candidates)
    "generation": {"max_new_tokens": 48, "temperature": 1.0, "max_prompt_length": 512},
    "sft": {"epochs": 8, "lr": 1e-3, "batch_size": 16, "max_length": 160, "eval_limit": 40, "train_limit": None},
    "synth": {"n_sources": 300, "candidates_per_source": 6, "min_gap": 0.05, "max_pairs_per_source": 3,
              "pair_strategy": "all_above_threshold", "max_new_tokens": 48, "batch_size": 50},
    "reward_model": {"epochs": 2, "lr": 1e-4, "batch_size": 16, "head_hidden": 0, "max_length": 160,
                     "val_fraction": 0.15, "normalize_samples": 64, "top_layers": 0,
                     "reference_pairs": False},
    "ppo": {"steps": 40, "batch_size": 16, "minibatch_size": 8, "ppo_epochs": 2, "lr": 5e-5,
            "kl_coef": 0.1, "vf_coef": 0.1, "whiten_advantages": True,
            # the research switches of PPOConfig (ppolab.advantage / ppolab.ppo); defaults = PPO + GAE
            "advantage_estimator": "gae", "group_size": 1, "loss_aggregation": "token-mean", "kl_in": "reward",
            "kl_loss_coef": 0.001, "clip_eps_high": None, "dual_clip": None,
            # what PPO maximises: "model" (the reward model), "chrf" (sentence chrF against the
            # training reference) or "model+chrf" (chrf_weight on chrF, the rest on the model)
            "reward": "model", "chrf_weight": 0.5,
            "record_rollouts": 4},  # rollouts per step written token by token to RUN/rollouts.jsonl (0 = off)
    "feedback": {"items": 80, "candidates": 6, "shown": 3, "custom_every": 5, "port": 0},
    "reward_model_human": {"epochs": 3, "lr": 5e-5, "batch_size": 8, "val_fraction": 0.25,
                           "mix_synthetic": 200},
    # The final stage learns from a noisier, smaller human-feedback reward model: a larger batch
    # keeps its per-step reward estimate steady; the learning rate is lower than the cold start's.
    "ppo_final": {"steps": 40, "lr_factor": 0.6, "batch_size": 32, "minibatch_size": 8},
    # flores_limit: FLORES-200 devtest sentences per direction scored after each model stage (and for
    # the base model), read from shared/data/flores200 when present; None = not scored.
    "eval": {"test_limit": None, "max_new_tokens": 48, "flores_limit": None, "batch_size": 32},
}

FAST = copy.deepcopy(CPU_TEST)
FAST["model"].update({"n_layers": 2, "hidden_size": 128, "intermediate_size": 256})
FAST["sft"].update({"epochs": 3})
FAST["synth"].update({"n_sources": 60})
FAST["ppo"].update({"steps": 6})
FAST["feedback"].update({"items": 12})
FAST["ppo_final"].update({"steps": 4, "batch_size": 16})
FAST["eval"].update({"test_limit": 30})

RESEARCH = copy.deepcopy(CPU_TEST)
RESEARCH["model"].update({"n_layers": 6, "hidden_size": 384, "intermediate_size": 1024})
RESEARCH["sft"].update({"epochs": 15})
RESEARCH["synth"].update({"n_sources": None})
RESEARCH["ppo"].update({"steps": 200, "batch_size": 64, "minibatch_size": 16, "ppo_epochs": 4})
RESEARCH["ppo_final"].update({"steps": 100})
RESEARCH["feedback"].update({"items": 200})

# production: real checkpoints (give their local folders; nothing is downloaded), bf16 and LoRA on
# a CUDA GPU. Memory: Gemma-2 2B in bf16 is ~5.2 GB of weights; with LoRA the reference shares
# them; the 2B reward model and a value model copied from it add ~10.4 GB; activations at batch 16
# x 128 tokens with gradient checkpointing stay under ~8 GB: plan for a 24 GB GPU (or 4-bit).
PRODUCTION = copy.deepcopy(RESEARCH)
PRODUCTION.update({"device": "cuda"})
PRODUCTION["model"] = {"policy_path": "/models/gemma-2-2b-it", "reward_path": None, "lora": True,
                       "lora_r": 16, "lora_alpha": 32, "dtype": "bfloat16", "gradient_checkpointing": True,
                       "load_in_4bit": False, "value_init": "shared"}
PRODUCTION["sft"].update({"epochs": 2, "lr": 2e-4, "batch_size": 16, "max_length": 256})
PRODUCTION["ppo"].update({"lr": 1e-5})
PRODUCTION["generation"].update({"max_new_tokens": 96})

# gemma-cpu: the real pretrained Gemma 3 270M (the `gemma` extra; ppolab.models.pretrained_path)
# through all seven stages on a 2-core CPU. LoRA policy, adapter-off reference, value head on the
# policy's trunk, reward model = the SFT trunk's top layers + a linear head, few-shot prompts
# (a base model), the output head trimmed to the tokens an Arabic translation needs. Meant to fit
# about two hours on a 2-core machine (not yet measured whole); every stage resumes after a kill.
GEMMA_CPU = copy.deepcopy(CPU_TEST)
# 1 thread: 1.34x slower than 2 on an idle machine, but 2 threads were 2.3x slower than 1 with one
# other CPU-bound process on the 2 cores (benchmarks/ppo_step_gemma_threads.jsonl).
GEMMA_CPU.update({"threads": 1})
GEMMA_CPU["prompt"] = {"format": "fewshot"}
GEMMA_CPU["model"] = {"policy_path": "gemma3-270m", "reward_path": None, "lora": True, "lora_r": 16,
                      "lora_alpha": 32, "lora_dropout": 0.0, "dtype": "float32", "value_init": "shared",
                      "value_head_hidden": 0, "vocab_trim": "arabic", "gradient_checkpointing": False}
GEMMA_CPU["sft"].update({"epochs": 1, "lr": 2e-4, "batch_size": 8, "max_length": 192, "eval_limit": 16,
                         "train_limit": 320, "eval_max_new_tokens": 48})
GEMMA_CPU["synth"].update({"n_sources": 64, "candidates_per_source": 4, "max_new_tokens": 48, "batch_size": 16})
GEMMA_CPU["reward_model"].update({"epochs": 2, "lr": 1e-4, "batch_size": 8, "max_length": 192,
                                  "normalize_samples": 32, "top_layers": 4, "val_fraction": 0.2})
# The reward is the reward model plus sentence chrF against the training reference (half each, both
# normalised on the starting policy's samples): with the reward model alone, 10-16 steps moved FLORES
# chrF by -1.3 / +1.5 (EN / FR) and the reward did not rise; the reference is a signal it cannot game.
GEMMA_CPU["ppo"].update({"steps": 32, "batch_size": 8, "minibatch_size": 8, "ppo_epochs": 2, "lr": 7e-5,
                         "kl_coef": 0.1, "reward": "model+chrf", "chrf_weight": 0.5})
GEMMA_CPU["generation"].update({"max_new_tokens": 48})
GEMMA_CPU["feedback"].update({"items": 16, "candidates": 4})
GEMMA_CPU["reward_model_human"].update({"epochs": 2, "batch_size": 8, "mix_synthetic": 64})
GEMMA_CPU["ppo_final"].update({"steps": 16, "batch_size": 8, "minibatch_size": 8})
GEMMA_CPU["eval"].update({"test_limit": None, "max_new_tokens": 96, "flores_limit": 200, "batch_size": 32})

PRESETS = {"cpu-test": CPU_TEST, "fast": FAST, "research": RESEARCH, "production": PRODUCTION,
           "gemma-cpu": GEMMA_CPU}


def preset_dict(name: str) -> dict:
    """The preset's settings as the nested dict it is written as (a copy)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def resolve(name: str, *overrides: dict) -> PipelineConfig:
    """The preset `name` with `overrides` (nested dicts, applied in order) merged in, loaded strictly."""
    data = preset_dict(name)
    for override in overrides:
        data = merge(data, override)
    return config_from_dict(data)


def get_preset(name: str) -> PipelineConfig:
    return resolve(name)
