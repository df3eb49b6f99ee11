"""The one place stages read their examples from: `load_split(cfg, name)` (the `data` section).

Today: the shipped EN/FR->AR corpus, restricted to `data.pairs`. The user's own files
(`data.train/valid/test`, held-out fractions) are read here too once implemented; until then
setting them is an error naming the setting, never silently ignored.
"""
from __future__ import annotations

from ..data import TranslationExample, load_shipped_corpus
from ..errors import UserError
from .config import PipelineConfig

SPLITS = ("train", "valid", "test")


def directions(cfg: PipelineConfig) -> dict[str, tuple[str, str]]:
    """`{"eng->arb": ("eng", "arb"), ...}`: the language pairs the loop runs (`data.pairs`)."""
    return cfg.data.direction_pairs()


def load_split(cfg: PipelineConfig, name: str) -> list[TranslationExample]:
    """The examples of split `name` ("train", "valid" or "test") of the pairs in `data.pairs`."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    d = cfg.data
    for key in ("train", "valid", "test", "valid_fraction", "test_fraction"):
        if getattr(d, key) is not None:
            # TODO(ownloop): read the user's TSV/CSV/JSONL files here.
            raise UserError(f"setting data.{key} = {getattr(d, key)!r}: reading your own corpus is not "
                            "implemented in this version; leave data.train/valid/test unset for the shipped corpus")
    pairs = directions(cfg)
    rows = [ex for ex in load_shipped_corpus(name) if ex.direction in pairs]
    if not rows:
        raise UserError(f"setting data.pairs = {d.pairs!r}: the shipped corpus has no {name} examples of these "
                        "pairs (it has eng->arb and fra->arb)")
    return rows
