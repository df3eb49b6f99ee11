"""Sampling strategies and the settings of a synthetic-preference run.

Why several strategies: a preference pair is only useful when its two texts differ clearly in
quality. Sampling every candidate the same way gives candidates of similar quality (small gaps,
few pairs); a spread of temperatures and truncations gives a spread of quality, so the best and
worst candidates of a source are more often far enough apart to pass `SynthConfig.min_gap`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError

__all__ = ["DEFAULT_STRATEGIES", "PAIR_STRATEGIES", "SamplingStrategy", "SynthConfig"]

# How candidates of one source become pairs, see `SynthConfig.pair_strategy`.
PAIR_STRATEGIES = ("best_vs_worst", "all_above_threshold")


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{name}: {msg}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingStrategy:
    """One way of sampling a candidate: temperature, then optional top-k / nucleus truncation.

    `top_k=0` and `top_p=1.0` mean "off". The name identifies the strategy in the output files
    (`chosen_strategy`, per-strategy statistics), so it must be unique within a run.
    """

    name: str
    temperature: float
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        c = "SamplingStrategy"
        _check(isinstance(self.name, str) and self.name.strip() != "", c, "name",
               f"must be a non-empty string, got {self.name!r}")
        _check(_is_real(self.temperature) and self.temperature > 0, c, "temperature",
               f"must be a finite number > 0 ({self.name!r}), got {self.temperature!r}")
        _check(_is_int(self.top_k) and self.top_k >= 0, c, "top_k",
               f"must be an int >= 0, 0 = off ({self.name!r}), got {self.top_k!r}")
        _check(_is_real(self.top_p) and 0 < self.top_p <= 1, c, "top_p",
               f"must be in (0, 1], 1.0 = off ({self.name!r}), got {self.top_p!r}")


# Six strategies from conservative to wild. Low temperature gives the model's most likely (often
# best) translations, high temperature noisier ones; top-k and nucleus sampling sit in between
# (hot but with the implausible tail cut off). With the default 6 candidates each strategy
# samples exactly one candidate per source.
DEFAULT_STRATEGIES: tuple[SamplingStrategy, ...] = (
    SamplingStrategy("t0.7", temperature=0.7),  # near the mode: likely "chosen" side
    SamplingStrategy("t1.0", temperature=1.0),  # the model's own distribution
    SamplingStrategy("t1.3", temperature=1.3),  # flatter: more errors
    SamplingStrategy("t1.6", temperature=1.6),  # much flatter: likely "rejected" side
    SamplingStrategy("k20_t1.0", temperature=1.0, top_k=20),  # plain sampling minus the long tail
    SamplingStrategy("p0.9_t1.2", temperature=1.2, top_p=0.9),  # hot, but nucleus-truncated
)


@dataclass
class SynthConfig:
    """Settings of `generate_synthetic_preferences`; validated on construction (`ConfigError`
    names the field).

    candidates_per_source: candidates sampled per source sentence (3..8). Candidate i uses
        strategy ``i % len(strategies)``, so with fewer candidates than strategies the last
        strategies are unused, and with more the first ones sample twice.
    strategies: the `SamplingStrategy` list (mappings with the same fields are accepted, e.g.
        from YAML); names must be unique.
    min_gap: a pair needs ``chosen_score >= rejected_score + min_gap``. Scores are the metric's
        sentence scores; CombinedMetric's are on a ~0-1 scale, so the default 0.05 is 5 chrF
        points when chrF is the only metric. Must be > 0: a pair of equal scores teaches nothing.
    pair_strategy: "best_vs_worst" (at most one pair per source: best vs worst candidate) or
        "all_above_threshold" (every ordered pair of candidates whose gap passes min_gap,
        largest gaps first, at most max_pairs_per_source).
    max_pairs_per_source: cap on pairs per source (only binds for "all_above_threshold").
    max_new_tokens: generation length limit per candidate.
    batch_size: source sentences per generate call (each call returns its strategy's
        candidates for all of them). The only setting that may change when resuming.
    seed: sampling seed. Each batch is seeded from (seed, strategy, the batch's source ids), so
        a batch's candidates do not depend on what ran before it (resume gives the same pairs).
    """

    candidates_per_source: int = 6
    strategies: tuple[SamplingStrategy, ...] = field(default_factory=lambda: DEFAULT_STRATEGIES)
    min_gap: float = 0.05
    pair_strategy: str = "best_vs_worst"
    max_pairs_per_source: int = 3
    max_new_tokens: int = 64
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept plain mappings (a config read from YAML/JSON) and lists: stored as a tuple of
        # SamplingStrategy so the config compares and serialises the same way whatever its origin.
        if isinstance(self.strategies, (list, tuple)):
            converted = []
            for i, s in enumerate(self.strategies):
                if isinstance(s, Mapping):
                    try:
                        s = SamplingStrategy(**s)
                    except TypeError as e:
                        raise ConfigError(f"SynthConfig.strategies[{i}]: {e}") from None
                converted.append(s)
            self.strategies = tuple(converted)
        self.validate()

    def validate(self) -> "SynthConfig":
        c = "SynthConfig"
        _check(_is_int(self.candidates_per_source) and 3 <= self.candidates_per_source <= 8, c,
               "candidates_per_source", f"must be an int in 3..8, got {self.candidates_per_source!r}")
        _check(isinstance(self.strategies, tuple) and len(self.strategies) > 0, c, "strategies",
               "must be a non-empty list of SamplingStrategy")
        for i, s in enumerate(self.strategies):
            _check(isinstance(s, SamplingStrategy), c, f"strategies[{i}]",
                   f"must be a SamplingStrategy, got {type(s).__name__}")
        names = [s.name for s in self.strategies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, c, "strategies", f"names must be unique, repeated: {dupes}")
        _check(_is_real(self.min_gap) and self.min_gap > 0, c, "min_gap",
               f"must be a finite number > 0, got {self.min_gap!r}")
        _check(self.pair_strategy in PAIR_STRATEGIES, c, "pair_strategy",
               f"must be one of {', '.join(PAIR_STRATEGIES)}, got {self.pair_strategy!r}")
        for name in ("max_pairs_per_source", "max_new_tokens", "batch_size"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, c, name, f"must be an int >= 1, got {v!r}")
        _check(_is_int(self.seed) and self.seed >= 0, c, "seed", f"must be an int >= 0, got {self.seed!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (strategies as dicts)."""
        return dataclasses.asdict(self)

    def strategy_for(self, candidate_index: int) -> SamplingStrategy:
        """The strategy that samples candidate `candidate_index` of a source."""
        return self.strategies[candidate_index % len(self.strategies)]
