"""The user's own corpus: train / valid / test files for the language pairs they name.

`load_user_splits(train, valid, test, pairs, ...)` reads each file with `load_parallel` (TSV, CSV,
JSONL ... with source, target and optional id / direction columns, or language-named columns such
as ``eng fra arb``) and keeps, for each pair of `pairs`, that pair's examples in file order. With no
valid or test file, those splits are held out of train by ratio, stable by source hash: a row keeps
its split when other rows are added or removed. The shipped corpus is the default train/valid/test.

Bad input is one `CorpusError` (a `UserError`) naming ``FILE:LINE``, raised before anything is
written: a missing column, an empty source, invalid UTF-8, a duplicate id, a row whose language
pair the pair list does not name, and (`check_context`) a source too long for the model.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

from .loaders import CorpusError, TranslationExample, _open_table, _resolve_format, load_parallel, shipped_corpus_dir
from .templates import build_prompt, parse_pairs

__all__ = ["check_context", "held_out", "load_pairs", "load_user_splits"]

SPLITS = ("train", "valid", "test")


def _where(ex: TranslationExample) -> tuple[str, int | None]:
    path, _, line = ex.origin.rpartition(":")
    return (path, int(line)) if line.isdigit() else (ex.origin, None)


def _pairs(pairs: str | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, str):
        try:
            return parse_pairs(pairs)
        except ValueError as e:
            raise CorpusError("data.pairs", None, str(e)) from None
    return [tuple(p) for p in pairs]


def load_pairs(path: str | Path, pairs: str | Sequence[tuple[str, str]]) -> list[TranslationExample]:
    """The examples of `path` for each of `pairs`, in file order (a row's pairs in `pairs` order).

    A file with a direction column gives each row its own pair, and a row whose pair is not in
    `pairs` is an error at its line. A file with generic source/target columns and no direction
    column holds one pair: `pairs` must name exactly one. Otherwise each pair's languages are
    columns of the file (``eng``, ``fra``, ``arb`` ... or their aliases), a missing one an error.
    """
    path, wanted = Path(path), _pairs(pairs)
    if not path.exists():
        raise CorpusError(path, None, "no such file")
    table = _open_table(path, _resolve_format(path, None), {})
    names = {c.strip().lower() for c in table.columns}
    if names & {"direction", "pair", "lang_pair", "language_pair"}:
        examples = list(load_parallel(path))
        allowed = {f"{s}->{t}" for s, t in wanted}
        for ex in examples:
            if ex.direction not in allowed:
                file, line = _where(ex)
                raise CorpusError(file, line, f"language pair {ex.direction!r} is not in the pair list "
                                              f"({', '.join(sorted(allowed))}; set data.pairs)", field="direction")
        return examples
    generic = table.headerless or not (names - {"source", "src", "target", "tgt", "id", "sent_id", "sentence_id",
                                                 "domain"})
    if generic and len(wanted) > 1:
        raise CorpusError(path, None, f"its source/target columns name no language and the pair list names "
                                      f"{len(wanted)} pairs ({', '.join(f'{s}->{t}' for s, t in wanted)}); add a "
                                      "direction column (e.g. eng->arb) or give one pair")
    per_pair = [list(load_parallel(path, src=s, tgt=t)) for s, t in wanted]
    # Interleave by row, so a 3-way file reads like load_shipped_corpus (each row's EN then FR).
    merged = [(_where(ex)[1] or 0, k, ex) for k, rows in enumerate(per_pair) for ex in rows]
    merged.sort(key=lambda t: t[:2])
    return [ex for _, _, ex in merged]


def _row_key(ex: TranslationExample, first_source: dict[str, str]) -> str:
    # A 3-way row's directions share one key (its first source), so a target never sits in two splits.
    return first_source.setdefault(ex.origin, ex.source)


def held_out(examples: list[TranslationExample], valid_fraction: float, test_fraction: float
             ) -> dict[str, list[TranslationExample]]:
    """Split `examples` into train/valid/test by the crc32 of each row's source: a row's split
    depends on its own text only. Fractions are of rows, in [0, 1), summing below 1."""
    for name, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise CorpusError(f"data.{name}", None, f"{f!r}: expected a fraction in [0, 1)")
    if valid_fraction + test_fraction >= 1:
        raise CorpusError("data", None, f"valid_fraction + test_fraction = {valid_fraction + test_fraction}: "
                                        "nothing would be left to train on")
    first: dict[str, str] = {}
    out: dict[str, list[TranslationExample]] = {s: [] for s in SPLITS}
    for ex in examples:
        u = (zlib.crc32(_row_key(ex, first).encode("utf-8")) % 1_000_000) / 1_000_000
        out["test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"].append(ex)
    return out


def load_user_splits(train: str | Path | None = None, valid: str | Path | None = None, test: str | Path | None = None,
                     pairs: str | Sequence[tuple[str, str]] = "eng->arb,fra->arb", valid_fraction: float = 0.1,
                     test_fraction: float = 0.1) -> dict[str, list[TranslationExample]]:
    """`{"train", "valid", "test"}` -> examples. No `train` file: the shipped corpus's three files
    (for any pair its columns hold: eng, fra, arb). A missing valid or test file: that split is
    held out of train by its fraction (`held_out`). Every file is read in full before any split
    is returned, so a bad row anywhere fails the whole call."""
    wanted = _pairs(pairs)
    if train is None:
        if valid is not None or test is not None:
            raise CorpusError("data.train", None, "a valid or test file needs a train file beside it")
        folder = shipped_corpus_dir()
        return {name: load_pairs(folder / f"{name}.tsv", wanted) for name in SPLITS}
    rows = {"train": load_pairs(train, wanted)}
    given = {"valid": valid, "test": test}
    for name, path in given.items():
        if path is not None:
            rows[name] = load_pairs(path, wanted)
    fractions = {n: (0.0 if given[n] is not None else f) for n, f in (("valid", valid_fraction),
                                                                        ("test", test_fraction))}
    split = held_out(rows["train"], fractions["valid"], fractions["test"])
    out = {"train": split["train"]}
    for name in ("valid", "test"):
        out[name] = rows[name] if given[name] is not None else split[name]
        if not out[name]:
            raise CorpusError(train, None, f"the held-out {name} split is empty ({len(rows['train'])} rows at "
                                           f"data.{name}_fraction = {fractions[name]}): give a {name} file or more rows")
    if not out["train"]:
        raise CorpusError(train, None, "no row left to train on after holding out valid and test")
    return out


def check_context(examples: list[TranslationExample], tokenizer, context: int, max_new_tokens: int) -> None:
    """CorpusError at the first example whose prompt (in `tokenizer`'s format) leaves fewer than
    `max_new_tokens` of the model's `context` positions for the translation."""
    budget = context - max_new_tokens
    for ex in examples:
        n = len(tokenizer(build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tokenizer),
                          add_special_tokens=False)["input_ids"])
        if n > budget:
            file, line = _where(ex)
            raise CorpusError(file, line, f"source is too long for the model: its prompt is {n} tokens, and a "
                                          f"{context}-token context leaves {budget} after {max_new_tokens} for the "
                                          "translation; shorten or split the sentence", field="source")
