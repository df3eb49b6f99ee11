"""Annotate from a terminal: the same flow as the web page, one prompt at a time.

For each item the annotator sees the source and the numbered candidates, then
types a ranking best-first (``2 1 3``, ``2,1,3`` or ``213``), ``s`` to skip or
``q`` to quit, and may then type a better translation (Enter for none).
``input``/``output`` are injectable so the flow can be scripted in tests.
"""
from __future__ import annotations

import re
import uuid
from typing import Callable

from ppolab.feedback.store import FeedbackError, FeedbackItem, FeedbackStore

__all__ = ["run_terminal", "parse_ranking"]


def parse_ranking(text: str, n: int) -> list[int]:
    """Parse a 1-based ranking of ``n`` candidates into 0-based indices.

    Raises ``ValueError`` with a message meant for the annotator.
    """
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if len(tokens) == 1 and n <= 9 and len(tokens[0]) == n and tokens[0].isdigit():
        tokens = list(tokens[0])  # "213" is a convenient shorthand when n <= 9
    try:
        numbers = [int(t) for t in tokens]
    except ValueError:
        raise ValueError(f"use numbers 1 to {n}, e.g. {' '.join(map(str, range(n, 0, -1)))}") from None
    if sorted(numbers) != list(range(1, n + 1)):
        raise ValueError(f"rank all {n} candidates, each number 1 to {n} exactly once")
    return [k - 1 for k in numbers]


def _show(item: FeedbackItem, output: Callable[[str], object]) -> None:
    output("")
    output(f"[item {item.id}, {item.direction}] {item.source}")
    for k, cand in enumerate(item.candidates, start=1):
        output(f"  {k}. {cand.text}    (score {cand.score:.3f})")


def run_terminal(store: FeedbackStore, annotator: str | None = None,
                 input: Callable[[str], str] = input,  # noqa: A002 (injectable builtin)
                 output: Callable[[str], object] = print) -> int:
    """Annotate until no item is left, ``q``, or end of input; return how many were saved."""
    saved = 0
    try:
        while not (annotator or "").strip():
            annotator = input("Your name: ")
        annotator = annotator.strip()
        skipped: list[int] = []
        while True:
            item = store.next_item(annotator, exclude=skipped)
            if item is None:
                output(f"No more items for {annotator}. Saved {saved} this session.")
                return saved
            _show(item, output)
            n = len(item.candidates)
            while True:
                answer = input(f"Ranking best first (e.g. {' '.join(map(str, range(1, n + 1)))}),"
                               " s = skip, q = quit: ").strip().lower()
                if answer in ("q", "s"):
                    break
                try:
                    ranking = parse_ranking(answer, n)
                    break
                except ValueError as e:
                    output(f"  ! {e}")
            if answer == "q":
                output(f"Bye. Saved {saved} this session.")
                return saved
            if answer == "s":
                skipped.append(item.id)
                continue
            custom = input("Better translation (Enter for none): ")
            try:
                store.submit(item.id, annotator, ranking, custom_translation=custom,
                             submission_id=uuid.uuid4().hex)
            except FeedbackError as e:  # e.g. the same name annotated it elsewhere meanwhile
                output(f"  ! not saved: {e}")
                skipped.append(item.id)
                continue
            saved += 1
            output("  saved.")
    except (EOFError, KeyboardInterrupt):
        output("")
        output("Stopped.")
        return saved
