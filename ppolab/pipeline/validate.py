"""Check a whole resolved configuration (types and ranges) before any stage runs.

Nothing here lists the settings by hand. A setting's type comes from the settings dataclass
the stage builds from its section (`SECTION_CLASSES`), else from the values the presets give
it; its range from that dataclass's own `validate()`, and for the pipeline's own keys (steps,
lr_factor, ...) from `_MINIMUM`. A key added to a preset or a field added to a dataclass is
checked with no change here. One error names the key, the value and what was expected.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from ..config import ConfigError
from .presets import PRESETS

# Which dataclasses each section feeds (as ppolab.pipeline.stages builds them), in lookup order.
SECTION_CLASSES = {
    "model": ("ppolab.config:ModelConfig",),
    "sft": ("ppolab.sft:SFTConfig",),
    "synth": ("ppolab.synthetic:SynthConfig",),
    "reward_model": ("ppolab.reward:RewardTrainConfig",),
    "reward_model_human": ("ppolab.reward:RewardTrainConfig",),
    "ppo": ("ppolab.config:PPOConfig", "ppolab.config:GenerationConfig"),
    "ppo_final": ("ppolab.config:PPOConfig", "ppolab.config:GenerationConfig"),
}
# Sections the stages read on top of another one: the dataclasses see the merge.
_LAYERED = {"ppo_final": "ppo", "reward_model_human": "reward_model"}
# The pipeline's own keys, by name in any section: the least value that makes sense.
_MINIMUM = {"steps": 1, "epochs": 1, "items": 1, "candidates": 2, "shown": 1, "normalize_samples": 2,
            "n_sources": 1, "threads": 1, "vocab_size": 256, "test_limit": 1, "max_new_tokens": 1}
_POSITIVE = {"lr", "lr_factor", "temperature"}
_FRACTION = {"val_fraction"}  # in (0, 1)


def _class(spec: str) -> type:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _field_types(section: str) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for spec in SECTION_CLASSES.get(section, ()):
        cls = _class(spec)
        resolved = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hints.setdefault(f.name, resolved[f.name])
    return hints


def _preset_values(path: tuple[str, ...]) -> list[Any]:
    out = []
    for preset in PRESETS.values():
        node: Any = preset
        for part in path:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            out.append(node)
    return out


def _type_of(value: Any) -> Any:
    return float if isinstance(value, float) else type(value)


def _expected(path: tuple[str, ...], hints: dict[str, Any]) -> Any:
    """The type a setting must have: the dataclass annotation, else what the presets give it."""
    if len(path) == 2 and path[1] in hints:
        return hints[path[1]]
    seen = {_type_of(v) for v in _preset_values(path)}
    if seen <= {type(None)}:
        return Any  # None in every preset and no dataclass field: nothing to go by
    if seen == {int, float} or seen == {int, float, type(None)}:
        seen -= {int}
    return typing.Union[tuple(seen)] if len(seen) > 1 else seen.pop()


def _is(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, arg) for arg in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_is(v, args[0] if args else Any) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True  # a type JSON cannot spell (a dataclass, a callable): the dataclass checks it


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null", dict: "a table of settings"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"setting {key} = {value!r}: expected {expected}")


def _check_range(key: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise _fail(key, value, "a finite number")
    if name in _MINIMUM and value < _MINIMUM[name]:
        raise _fail(key, value, f"a value >= {_MINIMUM[name]}")
    if name in _POSITIVE and value <= 0:
        raise _fail(key, value, "a number > 0")
    if name in _FRACTION and not 0 < value < 1:
        raise _fail(key, value, "a fraction between 0 and 1 (exclusive)")
    if value < 0:
        raise _fail(key, value, "a number >= 0")


def _check_with_classes(cfg: dict, section: str) -> None:
    """Build the section's dataclasses as the stages do and let their validate() judge the ranges."""
    values = {**cfg.get(_LAYERED.get(section, ""), {}), **cfg[section]}
    for spec in SECTION_CLASSES.get(section, ()):
        cls = _class(spec)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            obj = cls(**{k: v for k, v in values.items() if k in names})
            if hasattr(obj, "validate"):
                obj.validate()
        except (ConfigError, ValueError, TypeError) as e:
            found = re.match(r"\s*\w+\.(\w+)(?:\[\d+\])?: (.*)", str(e))
            if found and found.group(1) in values:
                name = found.group(1)
                where = section if name in cfg[section] else _LAYERED.get(section, section)
                problem = re.sub(r",? got .*$", "", found.group(2))
                if problem.startswith("must be "):
                    raise _fail(f"{where}.{name}", values[name], problem.removeprefix("must be ")) from None
                raise ConfigError(f"setting {where}.{name} = {values[name]!r}: {problem}") from None
            raise ConfigError(f"settings [{section}]: {e}") from None


def validate_settings(cfg: dict) -> dict:
    """Raise `ConfigError` naming the first bad setting; return `cfg` unchanged when all are fine."""
    for section, value in cfg.items():
        if any(isinstance(v, dict) for v in _preset_values((section,))):
            if not isinstance(value, dict):
                raise _fail(section, value, f"a table of settings (e.g. --set {section}.KEY=VALUE)")
            hints = _field_types(section)
            for name, v in value.items():
                hint = _expected((section, name), hints)
                if not _is(v, hint):
                    raise _fail(f"{section}.{name}", v, _describe(hint))
                _check_range(f"{section}.{name}", name, v)
        else:
            hint = _expected((section,), {})
            if not _is(value, hint):
                raise _fail(section, value, _describe(hint))
            _check_range(section, section, value)
    for section in ("ppo", "ppo_final"):
        from .stages import REWARDS

        part = cfg.get(section, {})
        if "reward" in part and part["reward"] not in REWARDS:
            raise _fail(f"{section}.reward", part["reward"], " or ".join(map(repr, REWARDS)))
        if "chrf_weight" in part and not 0 <= part["chrf_weight"] <= 1:
            raise _fail(f"{section}.chrf_weight", part["chrf_weight"], "a number between 0 and 1")
    if cfg.get("device") not in (None, "cpu", "cuda"):
        raise _fail("device", cfg["device"], "'cpu' or 'cuda'")
    for section in SECTION_CLASSES:
        if section in cfg:
            _check_with_classes(cfg, section)
    return cfg
