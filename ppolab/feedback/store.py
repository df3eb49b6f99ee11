"""SQLite-backed storage for human feedback on translation candidates.

The store knows no model. Items (a source sentence plus candidate translations,
already ordered best-first by a reward model) go in; human judgements (a ranking
of the shown candidates, optionally a better translation) come out, and are
exported as preference pairs for reward-model training.

Concurrency: every public method opens its own short-lived connection, so one
``FeedbackStore`` can be shared by all threads of an HTTP server. The database
runs in WAL mode (readers never block the writer) with a busy timeout, and
writes use ``BEGIN IMMEDIATE`` so two writers queue up instead of failing
with "database is locked" half-way through a transaction.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

__all__ = [
    "Candidate",
    "CandidateSource",
    "FeedbackError",
    "FeedbackItem",
    "FeedbackStore",
    "SubmitResult",
    "EXPORT_FILENAME",
]

EXPORT_FILENAME = "human_preferences.jsonl"
MAX_ANNOTATOR_LEN = 100
MAX_SUBMISSION_ID_LEN = 200
SCHEMA_VERSION = 2  # 2: the queue of sources waiting for candidates (`ppolab feedback add`)


class Candidate(NamedTuple):
    """One candidate translation and its reward-model score."""

    text: str
    score: float


# A pluggable generator of candidates: (source text, direction such as "eng->arb") -> candidates,
# best first.
CandidateSource = Callable[[str, str], Sequence[Candidate]]


class FeedbackError(ValueError):
    """Invalid feedback or item; the message says what is wrong.

    ``kind`` lets callers (the HTTP server) pick a status code without
    parsing messages: "invalid" (bad input), "not_found" (unknown item),
    "conflict" (already annotated / submission id reused differently).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FeedbackItem:
    """An item as shown to an annotator: only the top ``shown`` candidates."""

    id: int
    source: str
    direction: str
    candidates: tuple[Candidate, ...]
    reference: str | None
    model_version: str
    created: str


@dataclass(frozen=True)
class SubmitResult:
    feedback_id: int
    duplicate: bool  # True when this submission_id was already stored


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    direction     TEXT NOT NULL,
    reference     TEXT,
    candidates    TEXT NOT NULL,          -- JSON [{"text", "score"}], best first
    model_version TEXT NOT NULL DEFAULT '',
    created       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id                   INTEGER PRIMARY KEY,
    item_id              INTEGER NOT NULL REFERENCES items(id),
    annotator            TEXT NOT NULL,
    ranking              TEXT NOT NULL,   -- JSON list of candidate indices, best first
    custom_translation   TEXT,
    timestamp            TEXT NOT NULL,
    model_version        TEXT NOT NULL DEFAULT '',
    client_submission_id TEXT NOT NULL UNIQUE,  -- idempotency key: a re-sent submit is stored once
    UNIQUE (item_id, annotator)                 -- one judgement per annotator per item
);
CREATE INDEX IF NOT EXISTS feedback_by_annotator ON feedback(annotator, item_id);
CREATE TABLE IF NOT EXISTS queue (            -- sources waiting for a model to make their candidates
    id        INTEGER PRIMARY KEY,
    source    TEXT NOT NULL,
    direction TEXT NOT NULL,
    added     TEXT NOT NULL,
    item_id   INTEGER REFERENCES items(id),   -- set when its candidates became an item
    dropped   TEXT                            -- set when no usable candidate came out (the reason)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_item_id(item_id: Any, what: str = "item_id") -> int:
    """An int SQLite can hold (64-bit signed); larger ones are bad input, not an OverflowError."""
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise FeedbackError(f"{what} must be an integer, got {item_id!r}")
    if not -(2 ** 63) <= item_id < 2 ** 63:
        raise FeedbackError(f"{what} {item_id} is out of range (64-bit integer)")
    return item_id


def _clean_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise FeedbackError(f"{what} must be a string, got {type(value).__name__}")
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise FeedbackError(f"{what} contains a lone surrogate (not valid Unicode text)")
    text = value.strip()
    if not text:
        raise FeedbackError(f"{what} must not be empty")
    return text


def _clean_annotator(annotator: Any) -> str:
    name = _clean_text(annotator, "annotator")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise FeedbackError("annotator name must not contain control characters")
    if len(name) > MAX_ANNOTATOR_LEN:
        raise FeedbackError(f"annotator name is longer than {MAX_ANNOTATOR_LEN} characters")
    return name


def _clean_custom(custom: Any) -> str | None:
    if custom is None:
        return None
    if not isinstance(custom, str):
        raise FeedbackError(
            f"custom_translation must be a string or null, got {type(custom).__name__}"
        )
    if "\x00" in custom:  # what an annotator types never holds NUL; it would end the text in C tools
        raise FeedbackError("custom_translation must not contain NUL characters")
    # Whitespace-only means "no better translation", not an empty preferred text.
    return _clean_text(custom, "custom_translation") if custom.strip() else None


def _clean_candidate(raw: Any, where: str) -> Candidate:
    if isinstance(raw, dict):
        if "text" not in raw or "score" not in raw:
            raise FeedbackError(f"{where}: a candidate needs 'text' and 'score'")
        text, score = raw["text"], raw["score"]
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:  # Candidate is a tuple too
        text, score = raw
    else:
        raise FeedbackError(f"{where}: a candidate must be Candidate(text, score) or a dict")
    text = _clean_text(text, f"{where}: candidate text")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise FeedbackError(f"{where}: candidate score must be a number, got {score!r}")
    if not math.isfinite(score):  # NaN/inf would not survive JSON export
        raise FeedbackError(f"{where}: candidate score must be finite, got {score!r}")
    return Candidate(text, float(score))


def _clean_ranking(ranking: Any) -> list[int]:
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, (list, tuple)):
        raise FeedbackError("ranking must be a list of candidate indices, best first")
    for index in ranking:
        if isinstance(index, bool) or not isinstance(index, int):
            raise FeedbackError(f"ranking entries must be integers, got {index!r}")
    return list(ranking)


class FeedbackStore:
    """Human feedback in one SQLite file (WAL mode), safe to share across threads.

    ``shown`` is how many of an item's candidates (in the given best-first
    order) an annotator sees and must rank.
    """

    def __init__(self, path: str | os.PathLike[str], *, shown: int = 3,
                 busy_timeout_ms: int = 10_000) -> None:
        if str(path) in ("", ":memory:"):
            # Each call opens its own connection, and every in-memory
            # connection would be a different, empty database.
            raise ValueError("FeedbackStore needs a file path, not an in-memory database")
        if shown < 1:
            raise ValueError(f"shown must be >= 1, got {shown}")
        self.path = Path(path)
        self.shown = shown
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # WAL is persistent in the file; setting it once here is enough.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"could not enable WAL mode on {self.path} (got {mode!r})")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"FeedbackStore({str(self.path)!r}, shown={self.shown})"

    # -- connections ---------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so we control
        # when the write lock is taken (BEGIN IMMEDIATE).
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                               isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- items ---------------------------------------------------------------

    def add_items(self, items: Iterable[dict[str, Any]]) -> list[int]:
        """Add items; return their ids. All-or-nothing: one bad item adds none.

        Each item is a dict with ``source``, ``direction`` (e.g. "en-ar"),
        ``candidates`` (``Candidate``/``(text, score)``/``{"text","score"}``,
        best first as ranked by the reward model), and optional ``reference``,
        ``model_version`` and ``queue_id`` (the queued source it answers). Candidates with identical text are merged
        (first kept) so an annotator never ranks a text against itself.
        """
        rows = []
        for n, item in enumerate(items):
            where = f"item {n}"
            if not isinstance(item, dict):
                raise FeedbackError(f"{where}: must be a dict, got {type(item).__name__}")
            source = _clean_text(item.get("source"), f"{where}: source")
            direction = _clean_text(item.get("direction"), f"{where}: direction")
            reference = item.get("reference")
            if reference is not None:
                reference = _clean_text(reference, f"{where}: reference")
            model_version = item.get("model_version") or ""
            if not isinstance(model_version, str):
                raise FeedbackError(f"{where}: model_version must be a string")
            raw_candidates = item.get("candidates")
            if isinstance(raw_candidates, (str, bytes, dict)) or not isinstance(
                    raw_candidates, Iterable):
                raise FeedbackError(f"{where}: candidates must be a list")
            candidates: list[Candidate] = []
            seen: set[str] = set()
            for c in raw_candidates:
                cand = _clean_candidate(c, where)
                if cand.text not in seen:
                    seen.add(cand.text)
                    candidates.append(cand)
            if not candidates:
                raise FeedbackError(f"{where}: needs at least one candidate")
            queue_id = item.get("queue_id")
            if queue_id is not None:
                check_item_id(queue_id, f"{where}: queue_id")
            rows.append(((source, direction, reference,
                          json.dumps([c._asdict() for c in candidates], ensure_ascii=False),
                          model_version, _now()), queue_id))
        ids = []
        with self._write() as conn:
            for row, queue_id in rows:
                cur = conn.execute(
                    "INSERT INTO items (source, direction, reference, candidates,"
                    " model_version, created) VALUES (?, ?, ?, ?, ?, ?)", row)
                ids.append(cur.lastrowid)
                if queue_id is not None:  # the same transaction: a queued source becomes one item, once
                    conn.execute("UPDATE queue SET item_id = ? WHERE id = ?", (cur.lastrowid, queue_id))
        return ids

    # -- the queue of sources (`ppolab feedback add`) -------------------------------------

    def queue_sources(self, sources: Iterable[tuple[str, str]]) -> list[int]:
        """Queue `(source, direction)` pairs for candidates from the current model; return their
        queue ids. All-or-nothing: one bad source queues none."""
        rows = []
        for n, (source, direction) in enumerate(sources):
            rows.append((_clean_text(source, f"source {n}"), _clean_text(direction, f"source {n}: direction"), _now()))
        with self._write() as conn:
            return [conn.execute("INSERT INTO queue (source, direction, added) VALUES (?, ?, ?)", row).lastrowid
                    for row in rows]

    def queued(self) -> int:
        """How many queued sources wait for their candidates."""
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM queue WHERE item_id IS NULL AND dropped IS NULL").fetchone()[0]

    def next_queued(self) -> dict[str, Any] | None:
        """The oldest waiting source as `{"queue_id", "source", "direction"}`, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT id, source, direction FROM queue WHERE item_id IS NULL AND dropped IS NULL"
                               " ORDER BY id LIMIT 1").fetchone()
        return None if row is None else {"queue_id": row["id"], "source": row["source"], "direction": row["direction"]}

    def drop_queued(self, queue_id: int, reason: str) -> None:
        """Mark a queued source as done without an item (its candidates were unusable)."""
        with self._write() as conn:
            conn.execute("UPDATE queue SET dropped = ? WHERE id = ?", (reason, check_item_id(queue_id, "queue_id")))

    def _item_from_row(self, row: sqlite3.Row) -> FeedbackItem:
        candidates = tuple(Candidate(c["text"], c["score"])
                           for c in json.loads(row["candidates"]))[: self.shown]
        return FeedbackItem(id=row["id"], source=row["source"], direction=row["direction"],
                            candidates=candidates, reference=row["reference"],
                            model_version=row["model_version"], created=row["created"])

    def get_item(self, item_id: int) -> FeedbackItem:
        check_item_id(item_id)
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise FeedbackError(f"unknown item {item_id}", kind="not_found")
        return self._item_from_row(row)

    def next_item(self, annotator: str, exclude: Iterable[int] = ()) -> FeedbackItem | None:
        """The least-annotated item this annotator has not annotated yet.

        Ties go to the oldest item. ``exclude`` lists item ids to pass over
        (items the annotator skipped this session). Two annotators asking at
        once may get the same item; both judgements are kept. None when done.
        """
        annotator = _clean_annotator(annotator)
        excluded = json.dumps(sorted({check_item_id(i, "excluded item id") for i in exclude}))
        with self._connect() as conn:
            row = conn.execute(
                """
                SELECT i.*, COUNT(f.id) AS n_feedback
                FROM items i LEFT JOIN feedback f ON f.item_id = i.id
                WHERE i.id NOT IN (SELECT item_id FROM feedback WHERE annotator = ?)
                  AND i.id NOT IN (SELECT value FROM json_each(?))
                GROUP BY i.id
                ORDER BY n_feedback ASC, i.id ASC
                LIMIT 1
                """,
                (annotator, excluded),
            ).fetchone()
        return None if row is None else self._item_from_row(row)

    # -- feedback ------------------------------------------------------------

    def submit(self, item_id: int, annotator: str, ranking: Sequence[int],
               custom_translation: str | None = None,
               submission_id: str | None = None) -> SubmitResult:
        """Store one judgement; raise ``FeedbackError`` (nothing stored) if invalid.

        ``ranking`` lists the shown candidates' indices best first and must be
        a permutation of ``range(len(item.candidates))``. ``submission_id`` is
        the client's idempotency key: re-sending the same submission returns
        ``duplicate=True`` and stores nothing new. Without one, a fresh id is
        generated (no idempotency). The feedback row records the item's
        ``model_version``: the model whose candidates were judged.
        """
        check_item_id(item_id)
        annotator = _clean_annotator(annotator)
        ranking = _clean_ranking(ranking)
        custom = _clean_custom(custom_translation)
        if submission_id is None:
            submission_id = uuid.uuid4().hex
        submission_id = _clean_text(submission_id, "submission_id")
        if "\x00" in submission_id:
            raise FeedbackError("submission_id must not contain NUL characters")
        if len(submission_id) > MAX_SUBMISSION_ID_LEN:
            raise FeedbackError(f"submission_id is longer than {MAX_SUBMISSION_ID_LEN} characters")

        with self._write() as conn:
            previous = conn.execute(
                "SELECT * FROM feedback WHERE client_submission_id = ?", (submission_id,)
            ).fetchone()
            if previous is not None:
                same = (previous["item_id"] == item_id and previous["annotator"] == annotator
                        and json.loads(previous["ranking"]) == ranking
                        and previous["custom_translation"] == custom)
                if not same:
                    raise FeedbackError(
                        f"submission_id {submission_id!r} was already used for a different "
                        "submission", kind="conflict")
                return SubmitResult(previous["id"], duplicate=True)

            row = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise FeedbackError(f"unknown item {item_id}", kind="not_found")
            n_shown = len(self._item_from_row(row).candidates)
            if sorted(ranking) != list(range(n_shown)):
                raise FeedbackError(
                    f"ranking must be a permutation of the shown candidate indices "
                    f"{list(range(n_shown))}, got {ranking}")
            try:
                cur = conn.execute(
                    "INSERT INTO feedback (item_id, annotator, ranking, custom_translation,"
                    " timestamp, model_version, client_submission_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item_id, annotator, json.dumps(ranking), custom, _now(),
                     row["model_version"], submission_id))
            except sqlite3.IntegrityError:
                # Only UNIQUE(item_id, annotator) can fire here: the
                # submission id was checked inside this same transaction.
                raise FeedbackError(
                    f"annotator {annotator!r} already submitted feedback for item {item_id}",
                    kind="conflict") from None
            return SubmitResult(cur.lastrowid, duplicate=False)

    def records(self) -> list[dict[str, Any]]:
        """Every judgement joined with its item, oldest first (input of ``pairs``)."""
        with self._connect() as conn:
            rows = conn.execute(
                """
                SELECT f.id AS feedback_id, f.item_id, f.annotator, f.ranking,
                       f.custom_translation, f.timestamp, f.model_version,
                       i.source, i.direction, i.reference, i.candidates
                FROM feedback f JOIN items i ON i.id = f.item_id
                ORDER BY f.id
                """).fetchall()
        out = []
        for r in rows:
            ranking = json.loads(r["ranking"])
            # Keep only what was shown: the ranking covers exactly those.
            candidates = json.loads(r["candidates"])[: len(ranking)]
            out.append({
                "feedback_id": r["feedback_id"], "item_id": r["item_id"],
                "annotator": r["annotator"], "source": r["source"],
                "direction": r["direction"], "reference": r["reference"],
                "candidates": candidates, "ranking": ranking,
                "custom_translation": r["custom_translation"],
                "timestamp": r["timestamp"], "model_version": r["model_version"],
            })
        return out

    def export_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write all preference pairs as JSON lines, atomically; return the file.

        ``path`` is the output file, or a directory to write
        ``human_preferences.jsonl`` into. The file is written to a temporary
        sibling and renamed over the target, so a reader never sees half a file.
        """
        # Imported here: pairs imports FeedbackError from this module.
        from ppolab.feedback.pairs import pairs_from_feedback
        from ppolab.io import write_jsonl

        target = Path(path)
        if target.is_dir():
            target = target / EXPORT_FILENAME
        target.parent.mkdir(parents=True, exist_ok=True)
        pairs = pairs_from_feedback(self.records())
        write_jsonl(target, pairs)
        return target

    def stats(self) -> dict[str, Any]:
        with self._connect() as conn:
            n_items = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            n_feedback = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
            n_custom = conn.execute(
                "SELECT COUNT(*) FROM feedback WHERE custom_translation IS NOT NULL").fetchone()[0]
            n_unannotated = conn.execute(
                "SELECT COUNT(*) FROM items WHERE id NOT IN (SELECT item_id FROM feedback)"
            ).fetchone()[0]
            per_annotator = dict(conn.execute(
                "SELECT annotator, COUNT(*) FROM feedback GROUP BY annotator ORDER BY annotator"
            ).fetchall())
            n_queued = conn.execute(
                "SELECT COUNT(*) FROM queue WHERE item_id IS NULL AND dropped IS NULL").fetchone()[0]
        return {"items": n_items, "feedback": n_feedback, "custom_translations": n_custom,
                "items_unannotated": n_unannotated, "queued": n_queued, "annotators": per_annotator}
