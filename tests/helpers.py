"""Shared tiny-model fixtures for tests (built offline, seeded)."""
from __future__ import annotations

import functools

from ppolab.config import ModelConfig
from ppolab.models import build_policy, build_tokenizer


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
    return build_tokenizer()


def tiny_policy(arch: str = "llama", lora: bool = False, seed: int = 0, **kw):
    cfg = ModelConfig(arch=arch, lora=lora, seed=seed, hidden_size=32, n_heads=4, n_kv_heads=2,
                      intermediate_size=64, **kw)
    return build_policy(cfg, tiny_tokenizer())


def arabic_fraction(prompts, responses):
    """A reward that favours Arabic characters: a task a tiny random model can learn in a few steps."""
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


def ppo_trainer(policy=None, *, tok=None, reward=arabic_fraction, value="from_policy", ref=None, seed=None,
                lora=False, max_new_tokens=8, recorder=None, **ppo):
    """The one PPOTrainer factory of the tests: tiny seeded models unless given, `**ppo` -> PPOConfig.

    `seed`: `torch.manual_seed` first (before any model is built). `value`: "from_policy" (a copy of
    the policy's trunk + head), "auto" (that, or None for a critic-free estimator), or a model / None.
    `ref`: None for `Reference(policy)`. Models are built in the order tokenizer, policy, value.
    """
    import torch

    from ppolab.config import GenerationConfig, PPOConfig
    from ppolab.models import Reference, ValueModel
    from ppolab.ppo.trainer import PPOTrainer

    if seed is not None:
        torch.manual_seed(seed)
    tok = tok or tiny_tokenizer()
    policy = policy if policy is not None else tiny_policy(lora=lora)
    cfg = PPOConfig(**ppo)
    if value == "auto":
        value = None if cfg.critic_free else ValueModel.from_policy(policy)
    elif value == "from_policy":
        value = ValueModel.from_policy(policy)
    extra = {"recorder": recorder} if recorder is not None else {}
    return PPOTrainer(cfg, policy, Reference(policy) if ref is None else ref, value, reward, tok,
                      GenerationConfig(max_new_tokens=max_new_tokens), **extra)
