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
