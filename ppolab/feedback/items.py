"""Where an annotator's next item comes from: the store's items, else a source turned into an item
by the current model (a `CandidateSource`) on demand.

Sources wait in memory (``sources=``, for a server started by a script) or in the store's queue
(`FeedbackStore.queue_sources`, what ``ppolab feedback add`` fills; it outlives the process). The
web server and the terminal share this, and both can also take a sentence the annotator types
(`ItemMaker.compose`): its candidates are made at once and it is stored as an item like any other.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Iterable

from ppolab.feedback.store import CandidateSource, FeedbackError, FeedbackItem, FeedbackStore

__all__ = ["ItemMaker", "normalize_source"]


def normalize_source(src: Any) -> dict[str, Any]:
    if isinstance(src, dict) and isinstance(src.get("source"), str) and src.get("direction"):
        return {k: src[k] for k in ("source", "direction", "reference") if k in src}
    if isinstance(src, (tuple, list)) and len(src) == 2 and all(isinstance(x, str) for x in src):
        return {"source": src[0], "direction": src[1]}
    raise ValueError("each source must be (text, direction) or a dict with 'source' and "
                     f"'direction' (and optional 'reference'), got {src!r}")


class ItemMaker:
    """The store's next item for an annotator, making one from a waiting source when none is left.

    Generation is serialized: models are rarely thread-safe, and two threads must not turn the
    same source into two items. ``directions``: the pairs a typed sentence may ask for (the
    first is the default); empty means any.
    """

    def __init__(self, store: FeedbackStore, candidate_source: CandidateSource | None = None,
                 model_version: str = "", sources: Iterable[Any] = (), directions: Iterable[str] = (),
                 log=lambda message: None) -> None:
        self.store = store
        self.candidate_source = candidate_source
        self.model_version = model_version
        self.directions = list(directions)
        self.log = log
        self._pending = collections.deque(normalize_source(s) for s in sources)
        if self._pending and candidate_source is None:
            raise ValueError("sources to generate items from need a candidate_source")
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Sources waiting for candidates (in memory and in the store's queue, when a model can serve them)."""
        return len(self._pending) + (self.store.queued() if self.candidate_source is not None else 0)

    def _candidates(self, source: str, direction: str) -> list:
        return list(self.candidate_source(source, direction))

    def _make_one(self) -> bool:
        """Turn the next waiting source into an item (or drop it); False when none waits."""
        if self._pending:
            src = self._pending.popleft()
            try:
                candidates = self._candidates(src["source"], src["direction"])
            except Exception:
                self._pending.appendleft(src)  # keep it for a later retry
                raise
            queue_id = None
        else:
            queued = self.store.next_queued()
            if queued is None:
                return False
            queue_id = queued.pop("queue_id")
            src = queued
            candidates = self._candidates(src["source"], src["direction"])  # a failure leaves it queued
        try:
            self.store.add_items([{**src, "candidates": candidates, "model_version": self.model_version,
                                   "queue_id": queue_id}])
        except FeedbackError as e:
            # e.g. no usable candidate: retrying would fail the same way.
            self.log(f"dropping source {src['source']!r}: {e}")
            if queue_id is not None:
                self.store.drop_queued(queue_id, str(e))
        return True

    def next_item(self, annotator: str, exclude: Iterable[int] = ()) -> FeedbackItem | None:
        exclude = list(exclude)
        item = self.store.next_item(annotator, exclude)
        if item is not None or self.candidate_source is None:
            return item
        with self._lock:
            while True:
                # Re-check under the lock: another request may have just made an item this
                # annotator can take.
                item = self.store.next_item(annotator, exclude)
                if item is not None or not self._make_one():
                    return item

    def compose(self, source: Any, direction: Any = None) -> FeedbackItem:
        """An item for a sentence the annotator typed, its candidates made now."""
        if self.candidate_source is None:
            raise FeedbackError("this server has no model to translate with; start it with "
                                "`ppolab feedback serve --run DIR` on a run with a trained policy")
        if not isinstance(source, str) or not source.strip():
            raise FeedbackError("type a sentence to translate first")
        direction = direction or (self.directions[0] if self.directions else None)
        if not isinstance(direction, str) or (self.directions and direction not in self.directions):
            raise FeedbackError(f"direction {direction!r}: expected one of {', '.join(self.directions)}")
        with self._lock:
            candidates = self._candidates(source.strip(), direction)
            [item_id] = self.store.add_items([{"source": source.strip(), "direction": direction,
                                               "candidates": candidates, "model_version": self.model_version}])
        return self.store.get_item(item_id)
