"""The whole loop's settings as one typed tree, `PipelineConfig`, and its one strict loader.

Each section IS a settings dataclass of the library (PPOConfig, GenerationConfig, ModelConfig,
SFTConfig, SynthConfig, RewardTrainConfig, DPOConfig, ORPOConfig), joined where a stage needs
it with a small dataclass of the keys only the pipeline reads (a PPO stage's `steps`, a reward
model's `val_fraction`, ...), so `--set ppo.clip_eps=0.1` and `--set ppo.steps=10` both work and
a field any branch adds to those dataclasses is settable at once.

Presets and `--config` files are plain nested dicts read by `config_from_dict`: an unknown key,
a wrong type or a value out of range is a `ConfigError` naming `section.key`. Types come from the
dataclass annotations, ranges from each dataclass's own `validate()`.

Layering (explicit, `LAYERS`): `ppo_final` starts from the resolved `ppo` section and
`reward_model_human` from `reward_model` (every field the two classes share), then applies its own
keys. Every section's `seed` is the top-level `seed` unless the section (or the one it is layered
on) sets its own.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..config import ConfigError, GenerationConfig, ModelConfig, PPOConfig
from ..data.templates import PROMPT_FORMATS
from ..preference import DPOConfig, ORPOConfig
from ..reward import RewardTrainConfig
from ..sft import SFTConfig
from ..synthetic import SynthConfig

REWARDS = ("model", "model+chrf", "chrf")  # what a PPO stage maximises, see PPOStageKeys.reward
ANNOTATORS = ("simulated", "human")


def _check(ok: bool, cls: str, name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{cls}.{name}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(cls: str, obj: Any, names: tuple[str, ...], low: int, optional: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if optional and v is None:
            continue
        _check(_is_int(v) and v >= low, cls, name, f"must be a value >= {low}" + (" (or null)" if optional else ""))


# -- the pipeline's own keys, one small dataclass per stage --------------------------------------
@dataclass
class DataConfig:
    """Where each split comes from (None: the shipped corpus) and the language pairs the loop runs.

    `pairs`: comma-separated `src->tgt` ISO 639-3 codes. `valid_fraction` / `test_fraction`: a
    held-out share of `train` instead of a valid / test file. Read by `pipeline.data.load_split`."""

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    pairs: str = "eng->arb,fra->arb"
    valid_fraction: float | None = None
    test_fraction: float | None = None

    def validate(self) -> "DataConfig":
        c = "DataConfig"
        for name in ("train", "valid", "test"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, str) and v.strip() != ""), c, name, "must be a file path (or null)")
        _check(isinstance(self.pairs, str) and bool(self.direction_pairs()), c, "pairs",
               "must be comma-separated src->tgt language codes, e.g. eng->arb,fra->arb")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(v is None or (_is_num(v) and 0 < v < 1), c, name, "must be a fraction between 0 and 1 (or null)")
        return self

    def direction_pairs(self) -> dict[str, tuple[str, str]]:
        """`{"eng->arb": ("eng", "arb"), ...}` in the order given; {} when malformed."""
        out = {}
        for part in str(self.pairs).split(","):
            found = re.fullmatch(r"\s*([a-z]{3})\s*->\s*([a-z]{3})\s*", part)
            if not found or found.group(1) == found.group(2):
                return {}
            out[f"{found.group(1)}->{found.group(2)}"] = (found.group(1), found.group(2))
        return out


@dataclass
class TokenizerConfig:
    """The byte-level BPE trained on the train split for tiny models (unused with `model.policy_path`)."""

    vocab_size: int = 2000

    def validate(self) -> "TokenizerConfig":
        _at_least("TokenizerConfig", self, ("vocab_size",), 256)
        return self


@dataclass
class PromptConfig:
    """`format`: None = the model's own (plain for tiny models, see ppolab.data.templates)."""

    format: str | None = None

    def validate(self) -> "PromptConfig":
        _check(self.format is None or self.format in PROMPT_FORMATS, "PromptConfig", "format",
               f"must be null or one of {PROMPT_FORMATS}")
        return self


SFT_CHECKPOINTS = ("best", "final")


@dataclass
class SFTStageKeys:
    train_limit: int | None = None  # a seeded subset of the train split (both directions); None = all
    # What later stages load: "best" (the epoch of best validation chrF, `sft/best/`, when the
    # valid split gave one) or "final" (the last epoch). The report's SFT row says which.
    checkpoint: str = "best"

    def validate(self) -> "SFTStageKeys":
        _at_least("SFTStage", self, ("train_limit",), 1, optional=True)
        _check(self.checkpoint in SFT_CHECKPOINTS, "SFTStage", "checkpoint",
               f"must be one of {' or '.join(map(repr, SFT_CHECKPOINTS))}")
        return self


@dataclass
class SFTStage(SFTStageKeys, SFTConfig):
    """SFTConfig + the stage's own keys. `epochs=0` (with `model.policy_path`): no training, the
    given model is the SFT model (already fine-tuned)."""

    def validate(self) -> "SFTStage":
        # epochs 0 is the stage's own "skip training"; every other SFTConfig check still applies
        SFTConfig.validate(dataclasses.replace(self, epochs=1) if self.epochs == 0 else self)
        return SFTStageKeys.validate(self)


@dataclass
class SynthStageKeys:
    n_sources: int | None = 300  # training sources sampled for candidates (seeded); None = all

    def validate(self) -> "SynthStageKeys":
        _at_least("SynthStage", self, ("n_sources",), 1, optional=True)
        return self


@dataclass
class SynthStage(SynthStageKeys, SynthConfig):
    """SynthConfig + the stage's own keys."""

    def validate(self) -> "SynthStage":
        SynthConfig.validate(self)
        return SynthStageKeys.validate(self)


@dataclass
class RewardModelStageKeys:
    val_fraction: float = 0.15  # share of sources (hashed, stable) held out for validation
    normalize_samples: int = 64  # SFT samples the score is normalised on (mean 0, std 1)

    def validate(self) -> "RewardModelStageKeys":
        c = "RewardModelStage"
        _check(_is_num(self.val_fraction) and 0 < self.val_fraction < 1, c, "val_fraction",
               "must be a fraction between 0 and 1 (exclusive)")
        _at_least(c, self, ("normalize_samples",), 2)
        return self


@dataclass
class RewardModelStage(RewardModelStageKeys, RewardTrainConfig):
    """RewardTrainConfig + the cold-start stage's keys."""

    reference_pairs: bool = False  # also train on "reference beats each rejected sample" pairs

    def validate(self) -> "RewardModelStage":
        RewardTrainConfig.validate(self)
        return RewardModelStageKeys.validate(self)


@dataclass
class HumanRewardModelStage(RewardModelStageKeys, RewardTrainConfig):
    """RewardTrainConfig + the human-feedback stage's keys (layered on `reward_model`)."""

    mix_synthetic: int = 200  # synthetic training pairs mixed in (against forgetting)

    def validate(self) -> "HumanRewardModelStage":
        RewardTrainConfig.validate(self)
        RewardModelStageKeys.validate(self)
        _at_least("HumanRewardModelStage", self, ("mix_synthetic",), 0)
        return self


@dataclass
class PPOStageKeys:
    steps: int = 40
    # "model" (the reward model), "chrf" (sentence chrF against the training reference) or
    # "model+chrf" (chrf_weight on chrF, the rest on the model); both normalised on the start policy
    reward: str = "model"
    chrf_weight: float = 0.5
    record_rollouts: int = 4  # rollouts per step written token by token to RUN/rollouts.jsonl (0 = off)

    def validate(self) -> "PPOStageKeys":
        c = "PPOStage"
        _at_least(c, self, ("steps",), 1)
        _check(self.reward in REWARDS, c, "reward", f"must be one of {' or '.join(map(repr, REWARDS))}")
        _check(_is_num(self.chrf_weight) and 0 <= self.chrf_weight <= 1, c, "chrf_weight",
               "must be a number between 0 and 1")
        _at_least(c, self, ("record_rollouts",), 0)
        return self


@dataclass
class PPOStage(PPOStageKeys, PPOConfig):
    """PPOConfig + a PPO stage's own keys. The trainer gets `trainer_config()`, a plain PPOConfig."""

    def validate(self) -> "PPOStage":
        PPOConfig.validate(self)
        return PPOStageKeys.validate(self)

    @property
    def stage_lr(self) -> float:
        return self.lr

    def trainer_config(self) -> PPOConfig:
        return section_part(self, PPOConfig, lr=self.stage_lr)


@dataclass
class PPOFinalStage(PPOStage):
    """The final PPO stage, layered on `ppo`: its learning rate is `lr * lr_factor`."""

    lr_factor: float = 1.0

    def validate(self) -> "PPOFinalStage":
        PPOStage.validate(self)
        _check(_is_num(self.lr_factor) and self.lr_factor > 0, "PPOFinalStage", "lr_factor", "must be a number > 0")
        return self

    @property
    def stage_lr(self) -> float:
        return self.lr * self.lr_factor


@dataclass
class FeedbackStageConfig:
    """The feedback stage: `items` validation sources, `candidates` samples each, `shown` on the page."""

    items: int = 80
    candidates: int = 6
    shown: int = 3
    custom_every: int = 5  # the simulated annotator writes the reference every n-th item (0 = never)
    port: int = 0  # the feedback server's port (0: any free one)
    annotator: str = "simulated"  # "simulated" (ranks by chrF against the reference) or "human"

    def validate(self) -> "FeedbackStageConfig":
        c = "FeedbackStageConfig"
        _at_least(c, self, ("items", "shown"), 1)
        _at_least(c, self, ("candidates",), 2)
        _at_least(c, self, ("custom_every",), 0)
        _check(_is_int(self.port) and 0 <= self.port <= 65535, c, "port", "must be a port number 0..65535")
        _check(self.annotator in ANNOTATORS, c, "annotator", f"must be one of {' or '.join(map(repr, ANNOTATORS))}")
        return self


@dataclass
class EvalConfig:
    """Greedy evaluation after each model stage: the test split, and FLORES-200 when present."""

    test_limit: int | None = None  # first N test examples; None = all
    max_new_tokens: int = 48
    # FLORES-200 devtest sentences per direction scored after each model stage (read from
    # shared/data/flores200 when present); None = not scored
    flores_limit: int | None = None
    batch_size: int = 32

    def validate(self) -> "EvalConfig":
        _at_least("EvalConfig", self, ("test_limit", "flores_limit"), 1, optional=True)
        _at_least("EvalConfig", self, ("max_new_tokens", "batch_size"), 1)
        return self


# -- the tree ------------------------------------------------------------------------------------
@dataclass
class PipelineConfig:
    """Every setting of `ppolab demo` and the stage commands. Build it with `config_from_dict`
    (presets, files, `--set`), which applies the layering; `PipelineConfig()` is the defaults."""

    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda"
    threads: int = 1  # torch intra-op threads
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # PPO rollouts and policy samples
    sft: SFTStage = field(default_factory=SFTStage)
    synth: SynthStage = field(default_factory=SynthStage)
    reward_model: RewardModelStage = field(default_factory=RewardModelStage)
    ppo: PPOStage = field(default_factory=PPOStage)
    feedback: FeedbackStageConfig = field(default_factory=FeedbackStageConfig)
    reward_model_human: HumanRewardModelStage = field(default_factory=HumanRewardModelStage)
    ppo_final: PPOFinalStage = field(default_factory=PPOFinalStage)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    orpo: ORPOConfig = field(default_factory=ORPOConfig)

    def validate(self) -> "PipelineConfig":
        """Every section's own checks, then the top-level keys; errors name `section.key`."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                _validated(f.name, value, {})
        _check_top(self)
        return self


# layered section -> the section it starts from
LAYERS = {"ppo_final": "ppo", "reward_model_human": "reward_model"}
# keys that moved into another section: a hint in the unknown-key error
MOVED = {"ppo.max_new_tokens": "generation.max_new_tokens", "ppo.temperature": "generation.temperature",
         "ppo_final.max_new_tokens": "generation.max_new_tokens", "ppo_final.temperature": "generation.temperature"}

T = TypeVar("T")


def section_part(obj: Any, cls: type[T], **overrides: Any) -> T:
    """The `cls` (a library settings dataclass) inside a section: its fields' values, plus `overrides`."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if f.init}
    return cls(**{**values, **overrides})


def _check_top(cfg: PipelineConfig) -> None:
    if cfg.sft.epochs == 0 and not cfg.model.policy_path:
        raise ConfigError("setting sft.epochs = 0: skipping SFT needs an already fine-tuned model in model.policy_path")
    for name, ok, expected in (("seed", _is_int(cfg.seed) and cfg.seed >= 0, "a value >= 0"),
                               ("threads", _is_int(cfg.threads) and cfg.threads >= 1, "a value >= 1"),
                               ("device", cfg.device in ("cpu", "cuda"), "'cpu' or 'cuda'")):
        if not ok:
            raise _fail(name, getattr(cfg, name), expected)


# -- the strict loader ---------------------------------------------------------------------------
def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"setting {key} = {value!r}: expected {expected}")


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null", dict: "a table of settings"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list"
    if dataclasses.is_dataclass(hint):
        return "a table of settings"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` as the annotation `hint` wants it (JSON lists -> tuples, ints -> floats), or a
    ConfigError naming `key`, the value and the expected type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise _fail(key, value, _describe(hint))
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if _is_int(value):
            return value
    elif hint is float:
        if _is_num(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            args = [a for a in typing.get_args(hint) if a is not Ellipsis]
            items = [_coerce(f"{key}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif hint is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, (Mapping, hint)):
            return value  # the owning dataclass converts and checks it (e.g. SynthConfig.strategies)
    else:
        return value  # a type JSON cannot spell: the dataclass's validate() judges it
    raise _fail(key, value, _describe(hint))


_PROBLEM = re.compile(r"^\s*(?:\w+\.)?(\w+)(?:\[\d+\])?(?::\s*|\s+(?=must\b))(.*)$", re.S)


def _explain(section: str, obj_fields: set[str], values: dict, origin: dict, error: Exception) -> ConfigError:
    """A dataclass's own error (`SFTConfig.epochs: must be ..., got 0`, `beta must be ...`) as
    `setting section.key = value: expected ...`."""
    found = _PROBLEM.match(str(error))
    if found and found.group(1) in obj_fields:
        name = found.group(1)
        where = f"{section}.{name}" + (f" (from {origin[name]})" if name in origin else "")
        problem = re.sub(r",? got .*$", "", found.group(2), flags=re.S).strip()
        if problem.startswith("must be "):
            return _fail(where, values.get(name), problem.removeprefix("must be "))
        return ConfigError(f"setting {where} = {values.get(name)!r}: {problem}")
    return ConfigError(f"settings [{section}]: {error}")


def _validated(section: str, obj: Any, origin: dict) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    try:
        if hasattr(obj, "validate"):
            obj.validate()
    except (ConfigError, ValueError, TypeError) as e:
        raise _explain(section, names, {n: getattr(obj, n) for n in names}, origin, e) from None
    return obj


def _build_section(section: str, cls: type, raw: Any, base: Any, base_name: str | None, seed: int) -> Any:
    if not isinstance(raw, Mapping):
        raise _fail(section, raw, f"a table of settings (e.g. --set {section}.KEY=VALUE)")
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields_))
    if unknown:
        key = f"{section}.{unknown[0]}"
        hint = f" (now {MOVED[key]})" if key in MOVED else ""
        raise ConfigError(f"unknown setting {key!r}{hint}; the settings of {section} are: {', '.join(sorted(fields_))}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if base is not None:  # layering: start from the resolved base section
        shared = {f.name for f in dataclasses.fields(base)} & set(fields_)
        values.update({n: getattr(base, n) for n in shared})
        origin.update({n: f"{base_name}.{n}" for n in shared})
    elif "seed" in fields_:
        values["seed"] = seed
    for k, v in raw.items():
        values[k] = _coerce(f"{section}.{k}", v, hints[k])
        origin.pop(k, None)
    try:
        obj = cls(**values)  # some dataclasses validate in __post_init__
    except (ConfigError, ValueError, TypeError) as e:
        raise _explain(section, set(fields_), values, origin, e) from None
    return _validated(section, obj, origin)


def config_from_dict(data: Mapping, cls: type = PipelineConfig) -> PipelineConfig:
    """The strict loader: a nested dict of settings (a preset merged with files and `--set`) to a
    validated `cls` (a PipelineConfig). Keys the dict omits keep their defaults (see LAYERS)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"settings: expected a table such as {{\"ppo\": {{\"steps\": 10}}}}, got {type(data).__name__}")
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields_))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; the sections and top-level settings are: "
                          f"{', '.join(fields_)}")
    hints = typing.get_type_hints(cls)
    top = {n: _coerce(n, data[n], hints[n]) for n, f in fields_.items()
           if not dataclasses.is_dataclass(hints[n]) and n in data}
    seed = top.get("seed", fields_["seed"].default if "seed" in fields_ else 0)
    if not _is_int(seed) or seed < 0:
        raise _fail("seed", seed, "a value >= 0")
    sections: dict[str, Any] = {}
    for name, f in fields_.items():  # in field order: a base section precedes its layers
        if dataclasses.is_dataclass(hints[name]):
            base_name = LAYERS.get(name)
            sections[name] = _build_section(name, hints[name], data.get(name, {}), sections.get(base_name),
                                            base_name, seed)
    out = cls(**top, **sections)
    _check_top(out)
    return out


def config_to_dict(cfg: Any) -> dict:
    """A plain, JSON-safe dict of a (resolved) config: what `--show-config` prints and run.json keeps."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def merge(base: Mapping, override: Mapping) -> dict:
    """Deep-merge `override` into a copy of `base` (tables merge, anything else replaces); the
    keys are checked when the result is loaded (`config_from_dict`)."""
    out = json.loads(json.dumps(base))
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def parse_override(text: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}; the value parsed as JSON when it can be (numbers, true,
    null, lists), else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. ppo.steps=10")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out
