"""Synthetic preference pairs: sample candidates with several strategies, score them against the
reference with a metric, keep (chosen, rejected) pairs whose score gap is large enough.

Resumable: re-running on the same ``out_dir`` continues where a killed run stopped and never
duplicates a pair. See `generate` for the file layout.
"""
from .generate import (
    CANDIDATES_FILE,
    PAIR_FIELDS,
    PREFERENCES_FILE,
    RUN_FILE,
    STATS_FILE,
    PreferenceFileError,
    generate_synthetic_preferences,
    load_preferences,
    normalize_whitespace,
    select_pairs,
)
from .strategies import DEFAULT_STRATEGIES, PAIR_STRATEGIES, SamplingStrategy, SynthConfig

__all__ = [
    "CANDIDATES_FILE",
    "DEFAULT_STRATEGIES",
    "PAIR_FIELDS",
    "PAIR_STRATEGIES",
    "PREFERENCES_FILE",
    "PreferenceFileError",
    "RUN_FILE",
    "STATS_FILE",
    "SamplingStrategy",
    "SynthConfig",
    "generate_synthetic_preferences",
    "load_preferences",
    "normalize_whitespace",
    "select_pairs",
]
