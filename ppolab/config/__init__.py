"""Dataclass configs for ppolab, with validation and a round-trip to plain dicts / JSON.

Imported by anyone; imports nothing else of ours. Every field has a documented default;
`validate()` raises `ConfigError` naming the offending field. Presets live in `presets.py`.
"""
from .core import (
    ConfigError,
    GenerationConfig,
    ModelConfig,
    PPOConfig,
    config_from_dict,
    config_to_dict,
    load_json,
    save_json,
)

__all__ = [
    "ConfigError",
    "GenerationConfig",
    "ModelConfig",
    "PPOConfig",
    "config_from_dict",
    "config_to_dict",
    "load_json",
    "save_json",
]
