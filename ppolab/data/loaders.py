"""Load parallel corpora (English/French -> Arabic) into `TranslationExample` records.

One entry point, `load_parallel`, reads every format the project meets:

* ``.tsv`` / ``.txt`` -- tab-separated. Either *headerless* ``source<TAB>target``
  (the seed files) or with a header naming the columns (the FLORES-style
  ``id eng fra arb`` file, the shipped corpus's ``id domain eng fra arb``).
  TSV is split on tabs with **no quote handling**: a sentence may legitimately
  start with ``"``, and a CSV-style reader would swallow it.
* ``.csv`` -- read with the `csv` module (quotes honoured); header or not, as TSV.
* ``.jsonl`` -- one JSON object per line.
* ``.json`` / ``.parquet`` -- read through Hugging Face `datasets`.
* a directory written by ``datasets.Dataset.save_to_disk``.

Column names are matched case-insensitively against per-language aliases
(``eng/en/english``, ``fra/fr/french``, ``arb/ar/arabic``, plus FLORES names such
as ``eng_Latn``), or given explicitly with ``columns={"eng": "my_col"}``.
Generic ``source``/``src`` and ``target``/``tgt`` columns stand for the source
and target language; they are used only when no language-named column exists.

Bad input is never silently dropped: a malformed row, an empty field, a missing
column or invalid UTF-8 raises `CorpusError` naming the file, line and field.
With ``skip_bad=True`` the bad rows are skipped instead and listed in
``result.skipped`` (and summarised in a logged warning).
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import UserError

__all__ = [
    "CorpusError",
    "LoadResult",
    "SHIPPED_SPLITS",
    "SkippedRow",
    "TranslationExample",
    "load_parallel",
    "load_shipped_corpus",
    "shipped_corpus_dir",
]

logger = logging.getLogger(__name__)

SHIPPED_SPLITS = ("train", "valid", "test")

# Column-name aliases per language code, compared lower-cased. The code itself
# comes first; FLORES-200 uses "eng_Latn" and HF's FLORES loader "sentence_eng_Latn".
_LANG_ALIASES: dict[str, tuple[str, ...]] = {
    "eng": ("eng", "en", "english", "eng_latn", "sentence_eng_latn"),
    "fra": ("fra", "fr", "french", "fre", "fra_latn", "sentence_fra_latn"),
    "arb": ("arb", "ar", "arabic", "ara", "arb_arab", "sentence_arb_arab"),
}
# Generic names: they mean "whatever the source/target language is", so they
# rank below language-named columns (a file may have both "eng" and "source").
_SOURCE_ALIASES = ("source", "src")
_TARGET_ALIASES = ("target", "tgt")
_ID_ALIASES = ("id", "sent_id", "sentence_id")
# A per-row language pair ("eng->arb") beside generic source/target columns: one file, many pairs.
_DIRECTION_ALIASES = ("direction", "pair", "lang_pair", "language_pair")

# Headerless files are read as if they had this header.
_HEADERLESS_COLUMNS = ("source", "target")

_FORMATS = ("tsv", "csv", "jsonl", "json", "parquet", "hf")
_FORMAT_ALIASES = {"txt": "tsv", "tab": "tsv", "datasets": "hf", "arrow": "hf"}
_EXTENSIONS = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
}

# str.strip() already removes Unicode whitespace such as U+00A0 (NBSP) and
# U+202F (narrow NBSP, common before French punctuation); BOM and zero-width
# space are not whitespace to Python but are invisible junk at field edges.
# Bidi marks (U+200E/U+200F) are left alone: they can matter in Arabic text.
_EDGE_JUNK = re.compile(r"^[\s\ufeff\u200b]+|[\s\ufeff\u200b]+$")


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class TranslationExample:
    """One sentence pair.

    ``id`` identifies the corpus row, so the EN->AR and FR->AR examples built
    from one 3-way row share it; ``(id, direction)`` is unique. ``origin`` is
    ``"file:line"`` (for datasets-backed formats, ``"file:row"``, 1-based) so
    any example can be traced back to where it came from.
    """

    source: str
    target: str
    src_lang: str
    tgt_lang: str
    id: str
    origin: str

    @property
    def direction(self) -> str:
        """The translation direction, e.g. ``"eng->arb"``."""
        return f"{self.src_lang}->{self.tgt_lang}"


class CorpusError(UserError, ValueError):
    """A corpus file is unreadable or contains a bad row (a `UserError`: the CLI prints one line).

    Attributes: ``path``; ``line`` (1-based line, or row for datasets-backed
    formats; None for whole-file problems); ``field`` (the column concerned,
    if any); ``reason`` (the problem without the location prefix).
    """

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        reason: str,
        *,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        self.field = field
        self.unit = unit
        if line is None:
            where = self.path
        elif unit == "line":
            where = f"{self.path}:{line}"  # the file:line form editors can jump to
        else:
            where = f"{self.path} ({unit} {line})"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Custom __init__ signature: tell pickle (multiprocessing) how to rebuild.
        return (
            _rebuild_corpus_error,
            (self.path, self.line, self.reason, self.field, self.unit),
        )


def _rebuild_corpus_error(path, line, reason, field, unit) -> CorpusError:
    return CorpusError(path, line, reason, field=field, unit=unit)


class SkippedRow(NamedTuple):
    """A row left out by ``skip_bad=True``: its 1-based line (or row) and why."""

    line: int
    reason: str


class LoadResult(list[TranslationExample]):
    """The examples loaded from one file (a plain list of `TranslationExample`),
    plus ``path`` and ``skipped``: the rows dropped by ``skip_bad=True``."""

    def __init__(
        self,
        examples: Iterable[TranslationExample] = (),
        *,
        path: str | Path = "",
        skipped: Iterable[SkippedRow] = (),
    ) -> None:
        super().__init__(examples)
        self.path = str(path)
        self.skipped: list[SkippedRow] = list(skipped)


# ---------------------------------------------------------------- public functions


def load_parallel(
    path: str | Path,
    src: str | None = None,
    tgt: str = "arb",
    columns: Mapping[str, str] | None = None,
    format: str | None = None,
    skip_bad: bool = False,
) -> LoadResult:
    """Load a parallel corpus file as a list of `TranslationExample`.

    Args:
        path: the file, or a ``save_to_disk`` directory.
        src: source language code (``"eng"`` or ``"fra"``; aliases such as
            ``"en"`` accepted). None means every source language the file has:
            a 3-way ``eng fra arb`` file yields EN->AR *and* FR->AR examples.
            For a headerless ``source<TAB>target`` file, None means the
            language named in the file name (``fra-arb.tsv`` -> French), else English.
        tgt: target language code, Arabic by default.
        columns: explicit ``{language code or "id": column name}`` mapping; it
            overrides alias detection for the keys it names.
        format: one of ``tsv csv jsonl json parquet hf``; default from the
            extension (a directory is ``hf``).
        skip_bad: skip bad rows instead of raising; they are listed in
            ``result.skipped``. A row is bad as a whole if any field it
            needs is bad. Problems with the file as a whole (missing column,
            unknown format, no usable rows) raise either way.

    Returns:
        A `LoadResult` (a list), in file order; for each row, one example per
        source language.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorpusError: bad content; the message names file, line and field.
        ValueError: bad arguments (unknown format, ``src == tgt``...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    fmt = _resolve_format(path, format)
    tgt = _normalize_lang(tgt)
    src = None if src is None else _normalize_lang(src)
    if src is not None and src == tgt:
        raise ValueError(f"src and tgt are both {src!r}; a translation needs two languages")
    explicit = _normalize_columns(columns)

    table = _open_table(path, fmt, explicit)
    plan = _plan_columns(table, path, src, tgt, explicit)
    return _build_examples(table, plan, path, skip_bad)


def shipped_corpus_dir() -> Path:
    """The directory of the corpus shipped inside the package (``ppolab/data/corpus``)."""
    # Resolved from this file, not the working directory, so it works from any
    # cwd and from an installed wheel (the corpus is package data).
    return Path(__file__).resolve().parent / "corpus"


def load_shipped_corpus(split: str = "train", src: str | None = None) -> LoadResult:
    """Load a split (``train``, ``valid`` or ``test``) of the shipped EN/FR->AR corpus.

    With ``src=None`` each 3-way row yields both an EN->AR and an FR->AR example.
    """
    if split not in SHIPPED_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SHIPPED_SPLITS)}")
    path = shipped_corpus_dir() / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped corpus split {split!r} not found at {path}; "
            "the package data looks incomplete (reinstall ppolab or restore ppolab/data/corpus/)"
        )
    return load_parallel(path, src=src, tgt="arb", format="tsv")


# ------------------------------------------------------------------ arguments


def _normalize_lang(code: str) -> str:
    """Map a language code or alias (``"en"``, ``"French"``) to its canonical code."""
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"language code must be a non-empty string, got {code!r}")
    lowered = code.strip().lower()
    for lang, aliases in _LANG_ALIASES.items():
        if lowered in aliases:
            return lang
    return lowered  # an unknown language is fine, given columns= naming its column


def _normalize_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise TypeError(f"columns must be a mapping like {{'eng': 'my_col'}}, got {type(columns).__name__}")
    explicit: dict[str, str] = {}
    for key, column in columns.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"columns[{key!r}] must be a column name, got {column!r}")
        canonical = "id" if str(key).strip().lower() == "id" else _normalize_lang(key)
        if canonical in explicit:
            raise ValueError(f"columns maps {canonical!r} twice ({explicit[canonical]!r} and {column!r})")
        explicit[canonical] = column
    return explicit


def _resolve_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = _FORMAT_ALIASES.get(format.lower().lstrip("."), format.lower().lstrip("."))
        if fmt not in _FORMATS:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(_FORMATS)}")
        return fmt
    if path.is_dir():
        return "hf"
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; "
            f"pass format= one of {', '.join(_FORMATS)}"
        ) from None


# --------------------------------------------------------------------- readers


@dataclass
class _Record:
    """One row as read from the file, before validation."""

    number: int  # 1-based line (or row, for datasets-backed formats)
    fields: dict[str, Any] | None  # None when the row could not be parsed
    problem: str | None = None
    field: str | None = None


@dataclass
class _Table:
    """A file opened for reading: its column names and its rows."""

    columns: list[str]
    columns_at: int | None  # where the column names come from (header line)
    headerless: bool
    unit: str  # "line" or "row", for messages
    records: Iterator[_Record]


def _open_table(path: Path, fmt: str, explicit: dict[str, str]) -> _Table:
    if fmt == "tsv":
        return _delimited_table(path, _tsv_rows(path), explicit)
    if fmt == "csv":
        return _delimited_table(path, _csv_rows(path), explicit)
    if fmt == "jsonl":
        return _jsonl_table(path)
    return _datasets_table(path, fmt)


def _read_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """Yield ``(line number, text, problem)``, decoding each line separately so
    invalid UTF-8 is reported on its own line rather than failing the file."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            # Split on "\n" only (binary iteration): str.splitlines() would also
            # break on U+2028 and friends, which can occur inside sentences.
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM from Windows editors
            try:
                yield number, raw.decode("utf-8"), None
            except UnicodeDecodeError as err:
                text = raw.decode("utf-8", errors="replace")
                yield number, text, f"invalid UTF-8 ({err.reason} at byte {err.start} of the line)"


# A parsed delimited row: (first line, fields, problem or None).
_Row = tuple[int, list[str], str | None]


def _tsv_rows(path: Path) -> Iterator[_Row]:
    for number, text, problem in _read_lines(path):
        if not text.strip() and problem is None:
            continue  # blank lines (e.g. trailing ones) carry no data
        # Deliberately no quote handling: a leading '"' is part of the sentence.
        yield number, text.split("\t"), problem


def _csv_rows(path: Path) -> Iterator[_Row]:
    bad_lines: dict[int, str] = {}

    def lines() -> Iterator[str]:
        for number, text, problem in _read_lines(path):
            if problem is not None:
                bad_lines[number] = problem
            yield text + "\n"

    reader = csv.reader(lines())
    last_line = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            # The parser cannot resynchronise after this, so it is fatal.
            raise CorpusError(path, reader.line_num, f"malformed CSV: {err}") from None
        first, last_line = last_line + 1, reader.line_num  # a quoted field may span lines
        problem = next((bad_lines[n] for n in range(first, last_line + 1) if n in bad_lines), None)
        if not any(f.strip() for f in fields) and problem is None:
            continue
        yield first, fields, problem


def _delimited_table(path: Path, rows: Iterator[_Row], explicit: dict[str, str]) -> _Table:
    first = next(rows, None)
    if first is None:
        raise CorpusError(path, None, "file is empty")
    number, fields, problem = first
    names = [f.strip() for f in fields]
    if explicit or _looks_like_header(names):
        if problem is not None:
            raise CorpusError(path, number, f"cannot read the header: {problem}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise CorpusError(path, number, f"duplicate column name(s) in header: {', '.join(duplicates)}")
        header, data, headerless = names, rows, False
    else:
        header, data, headerless = list(_HEADERLESS_COLUMNS), itertools.chain([first], rows), True

    def records() -> Iterator[_Record]:
        for number, fields, problem in data:
            if problem is not None:
                yield _Record(number, None, problem)
            elif len(fields) != len(header):
                yield _Record(number, None, *_field_count_problem(fields, header, headerless))
            else:
                yield _Record(number, dict(zip(header, fields)))

    return _Table(header, None if headerless else number, headerless, "line", records())


def _looks_like_header(names: list[str]) -> bool:
    """A first line is a header if at least two of its fields are known column
    names: one alone could be a sentence ("English"), two together hardly."""
    known = {a for aliases in _LANG_ALIASES.values() for a in aliases}
    known.update(_SOURCE_ALIASES, _TARGET_ALIASES, _ID_ALIASES, _DIRECTION_ALIASES, ["domain"])
    return sum(name.lower() in known for name in names) >= 2


def _field_count_problem(fields: list[str], header: list[str], headerless: bool) -> tuple[str, str]:
    layout = "source<TAB>target (headerless file)" if headerless else ", ".join(header)
    if len(fields) < len(header):
        missing = header[len(fields)]
        return (
            f"expected {len(header)} fields ({layout}), found {len(fields)}: field {missing!r} is missing",
            missing,
        )
    return (
        f"expected {len(header)} fields ({layout}), found {len(fields)}: "
        f"unexpected extra field after {header[-1]!r} (a stray tab?)",
        header[-1],
    )


def _jsonl_table(path: Path) -> _Table:
    def records() -> Iterator[_Record]:
        for number, text, problem in _read_lines(path):
            if problem is not None:
                yield _Record(number, None, problem)
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                yield _Record(number, None, f"invalid JSON: {err.msg} (column {err.colno})")
                continue
            if not isinstance(value, dict):
                yield _Record(number, None, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield _Record(number, _flatten_translation(value))

    # JSON lines have no header: take the column names from the first good
    # record, and put the records read so far back in front of the rest.
    stream = records()
    seen: list[_Record] = []
    for record in stream:
        seen.append(record)
        if record.fields is not None:
            return _Table(list(record.fields), record.number, False, "line", itertools.chain(seen, stream))
    if seen:
        # Every line is bad: report the first one, even with skip_bad, because
        # without one good record there are no column names to work with.
        raise CorpusError(path, seen[0].number, seen[0].problem or "unreadable record")
    raise CorpusError(path, None, "file is empty")


def _flatten_translation(row: dict[str, Any]) -> dict[str, Any]:
    """Lift HF's nested ``{"translation": {"en": ..., "ar": ...}}`` (opus/wmt
    style) to top-level keys, so aliases find the languages."""
    nested = row.get("translation")
    if not isinstance(nested, dict):
        return row
    flat = {k: v for k, v in row.items() if k != "translation"}
    flat.update(nested)
    return flat


def _datasets_table(path: Path, fmt: str) -> _Table:
    import datasets  # imported lazily: it is slow to import and only these formats need it

    try:
        if fmt == "hf":
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                splits = list(dataset)
                if len(splits) != 1:
                    raise CorpusError(
                        path,
                        None,
                        f"is a DatasetDict with splits {splits}; load one split's "
                        f"directory instead, e.g. {path / splits[0]}",
                    )
                dataset = dataset[splits[0]]
            rows = dataset.to_list()
        else:
            # A throwaway cache: loading a local file must not leave Arrow copies
            # in ~/.cache, and keep_in_memory lets the rows outlive the directory.
            with tempfile.TemporaryDirectory(prefix="ppolab-datasets-") as cache:
                dataset = datasets.load_dataset(
                    fmt, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
                )
                rows = dataset.to_list()
    except CorpusError:
        raise
    except Exception as err:  # datasets raises many types; keep its message, add the file
        raise CorpusError(path, None, f"could not be read as {fmt}: {type(err).__name__}: {err}") from err

    if not rows:
        raise CorpusError(path, None, "contains no rows")
    rows = [_flatten_translation(row) for row in rows]
    records = (_Record(number, row) for number, row in enumerate(rows, start=1))
    return _Table(list(rows[0]), None, False, "row", records)


# ----------------------------------------------------------- column planning


@dataclass(frozen=True)
class _Plan:
    """Which column holds what."""

    sources: tuple[tuple[str, str], ...]  # (language code, column), in output order
    tgt_lang: str
    tgt_col: str
    id_col: str | None
    direction_col: str | None = None  # set: each row names its pair; sources' code and tgt_lang are unused


def _plan_columns(
    table: _Table, path: Path, src: str | None, tgt: str, explicit: dict[str, str]
) -> _Plan:
    by_lower: dict[str, list[str]] = {}
    for name in table.columns:
        by_lower.setdefault(name.lower(), []).append(name)

    def fail(reason: str, field: str) -> CorpusError:
        available = ", ".join(table.columns) if table.columns else "none"
        return CorpusError(
            path, table.columns_at, f"{reason}; columns present: {available}", field=field, unit=table.unit
        )

    def find(aliases: tuple[str, ...], what: str) -> str | None:
        hits = [name for alias in aliases for name in by_lower.get(alias, [])]
        if len(hits) > 1:
            raise fail(f"ambiguous {what}: {' and '.join(repr(h) for h in hits)} both match; pass columns=", what)
        return hits[0] if hits else None

    for key, column in explicit.items():
        if column not in table.columns:
            raise fail(f"missing column {column!r} (given as columns[{key!r}])", column)

    direction_col = find(_DIRECTION_ALIASES, "direction") if src is None and not explicit else None
    if direction_col is not None:
        src_col, tgt_col = find(_SOURCE_ALIASES, "source"), find(_TARGET_ALIASES, "target")
        if src_col is None or tgt_col is None:
            missing = "source" if src_col is None else "target"
            raise fail(f"missing column {missing!r} (a file with a {direction_col!r} column names its texts "
                       "'source' and 'target')", missing)
        return _Plan((("", src_col),), "", tgt_col, find(_ID_ALIASES, "id"), direction_col)

    def column_for(lang: str, generic: tuple[str, ...]) -> str | None:
        if lang in explicit:
            return explicit[lang]
        return find(_LANG_ALIASES.get(lang, (lang,)), lang) or find(generic, lang)

    tgt_col = column_for(tgt, _TARGET_ALIASES)
    if tgt_col is None:
        looked = _LANG_ALIASES.get(tgt, (tgt,)) + _TARGET_ALIASES
        raise fail(f"missing column for target language {tgt!r} (looked for: {', '.join(looked)})", tgt)

    if src is not None:
        src_col = column_for(src, _SOURCE_ALIASES)
        if src_col is None:
            looked = _LANG_ALIASES.get(src, (src,)) + _SOURCE_ALIASES
            raise fail(f"missing column for source language {src!r} (looked for: {', '.join(looked)})", src)
        sources = [(src, src_col)]
    else:
        # Every language-named column other than the target is a source.
        langs = [lang for lang in _LANG_ALIASES if lang != tgt]
        langs += [lang for lang in explicit if lang not in langs and lang not in (tgt, "id")]
        sources = []
        for lang in langs:
            column = explicit.get(lang) or find(_LANG_ALIASES.get(lang, (lang,)), lang)
            if column is not None:
                sources.append((lang, column))
        if not sources:
            generic = find(_SOURCE_ALIASES, "source")
            if generic is None:
                raise fail(f"no source-language column found for target {tgt!r}", "source")
            sources = [(_language_from_filename(path, tgt), generic)]

    for lang, column in sources:
        if column == tgt_col:
            raise fail(f"column {column!r} is both the {lang!r} source and the {tgt!r} target", column)
    id_col = explicit.get("id") or find(_ID_ALIASES, "id")
    return _Plan(tuple(sources), tgt, tgt_col, id_col)


def _language_from_filename(path: Path, tgt: str) -> str:
    """Source language of a file with only generic columns: the one language
    its name mentions (``seeds/fra-arb.tsv`` -> ``fra``), else English."""
    tokens = set(re.split(r"[^a-z]+", path.stem.lower()))
    named = [lang for lang, aliases in _LANG_ALIASES.items() if lang != tgt and tokens & set(aliases)]
    if len(named) == 1:
        return named[0]
    if tgt == "eng":
        raise CorpusError(path, None, "cannot tell the source language of this file; pass src=")
    return "eng"


# -------------------------------------------------------------------- building


def _build_examples(table: _Table, plan: _Plan, path: Path, skip_bad: bool) -> LoadResult:
    result = LoadResult(path=path)
    first_line: dict[tuple[str, str], int] = {}  # (id, direction) -> where it was first seen
    for record in table.records:
        try:
            examples = _examples_from_record(record, plan, path, table.unit)
            for ex in examples:
                seen = first_line.get((ex.id, ex.direction))
                if seen is not None:
                    raise CorpusError(path, record.number, f"duplicate id {ex.id!r} for {ex.direction}: "
                                      f"{table.unit} {seen} has it too", field=plan.id_col, unit=table.unit)
            first_line.update({(ex.id, ex.direction): record.number for ex in examples})
            result.extend(examples)
        except CorpusError as err:
            if not skip_bad:
                raise
            result.skipped.append(SkippedRow(record.number, err.reason))

    if result.skipped:
        first = result.skipped[0]
        logger.warning(
            "%s: skipped %d bad row(s) (skip_bad=True); first: %s %d: %s",
            path, len(result.skipped), table.unit, first.line, first.reason,
        )
    if not result:
        detail = f" ({len(result.skipped)} bad row(s) skipped)" if result.skipped else ""
        raise CorpusError(path, None, f"contains no usable rows{detail}")
    return result


def _examples_from_record(record: _Record, plan: _Plan, path: Path, unit: str) -> list[TranslationExample]:
    def bad(reason: str, field: str | None = None) -> CorpusError:
        return CorpusError(path, record.number, reason, field=field, unit=unit)

    if record.fields is None:
        raise bad(record.problem or "unreadable row", record.field)

    def text(column: str) -> str:
        if column not in record.fields:
            raise bad(f"field {column!r} is missing", column)
        value = record.fields[column]
        if value is None:
            raise bad(f"field {column!r} is null", column)
        if not isinstance(value, str):
            raise bad(f"field {column!r} must be a string, got {type(value).__name__}: {value!r}", column)
        cleaned = _EDGE_JUNK.sub("", value)
        if not cleaned:
            raise bad(f"field {column!r} is empty", column)
        return cleaned

    if plan.id_col is None:
        row_id = f"{path.stem}-{record.number}"
    else:
        raw_id = record.fields.get(plan.id_col)
        # Integer ids are common in JSON; bool is an int subclass but no id.
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            row_id = str(raw_id)
        else:
            row_id = text(plan.id_col)

    # Validate every field before building anything, so a row is all-or-nothing.
    target = text(plan.tgt_col)
    sources = [(lang, text(column)) for lang, column in plan.sources]
    tgt_lang = plan.tgt_lang
    if plan.direction_col is not None:
        pair = text(plan.direction_col)
        src_lang, sep, tgt_lang = (part.strip() for part in pair.partition("->"))
        if not sep or not src_lang or not tgt_lang:
            raise bad(f"field {plan.direction_col!r} is {pair!r}: expected SOURCE->TARGET, e.g. eng->arb",
                      plan.direction_col)
        sources = [(src_lang, sources[0][1])]
    origin = f"{path}:{record.number}"
    return [
        TranslationExample(source, target, lang, tgt_lang, row_id, origin)
        for lang, source in sources
    ]
