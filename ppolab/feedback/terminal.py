"""Annotate from a terminal: the same flow as the web page, one prompt at a time.

For each item the annotator sees the source and the numbered candidates, then
types a ranking best-first (``2 1 3``, ``2,1,3`` or ``213``), ``s`` to skip or
``q`` to quit, and may then type a better translation (Enter for none). With a model
behind it (an `ItemMaker` with a candidate source, ``ppolab feedback annotate``), queued
sources become items as they come up, and ``t`` lets the annotator type a sentence of
their own and rank the model's candidates for it at once.
``input``/``output`` are injectable so the flow can be scripted in tests.
"""
from __future__ import annotations

import re
import uuid
from typing import Callable

from ppolab.feedback.items import ItemMaker
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


def _compose(items: ItemMaker, text: str, output: Callable[[str], object]) -> FeedbackItem | None:
    try:
        return items.compose(text)
    except FeedbackError as e:
        output(f"  ! {e}")
        return None


def run_terminal(store: FeedbackStore | ItemMaker, annotator: str | None = None,
                 input: Callable[[str], str] | None = None,  # noqa: A002 (injectable builtin)
                 output: Callable[[str], object] = print) -> int:
    """Annotate until no item is left, ``q``, or end of input; return how many were saved.
    ``input`` defaults to the builtin, looked up at call time."""
    import builtins

    input = input or builtins.input  # noqa: A001
    items = store if isinstance(store, ItemMaker) else ItemMaker(store)
    store = items.store
    own = " t = type your own sentence," if items.candidate_source is not None else ""
    saved = 0
    try:
        while not (annotator or "").strip():
            annotator = input("Your name: ")
        annotator = annotator.strip()
        skipped: list[int] = []
        typed: FeedbackItem | None = None
        while True:
            item, typed = typed or items.next_item(annotator, exclude=skipped), None
            if item is None:
                text = input("No more items. Type a sentence of your own (Enter to stop): ").strip() if own else ""
                if not text:
                    output(f"No more items for {annotator}. Saved {saved} this session.")
                    return saved
                typed = _compose(items, text, output)
                continue
            _show(item, output)
            n = len(item.candidates)
            while True:
                answer = input(f"Ranking best first (e.g. {' '.join(map(str, range(1, n + 1)))}),"
                               f" s = skip,{own} q = quit: ").strip().lower()
                if answer in ("q", "s") or (own and answer == "t"):
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
            if answer == "t":  # the item stays unanswered: it comes back after the typed one
                text = input("Your sentence: ").strip()
                typed = _compose(items, text, output) if text else None
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
