"""Turn human judgements into preference pairs for reward-model training.

A pair is a plain dict::

    {"source", "direction", "chosen", "rejected", "origin", "annotator", "item_id"}

with ``origin`` one of "ranking", "custom", "rating". Three kinds of input:

* a ranking of n shown candidates gives every implied preference, n*(n-1)/2
  pairs (the i-th best is chosen over every one ranked below it);
* a custom translation written by the annotator is chosen over every
  candidate that was shown;
* rating files (responses rated 1-5) give a pair for every two responses
  whose ratings differ by at least ``min_difference``; ties give nothing.

Pairs are de-duplicated on (annotator, source, direction, chosen, rejected):
the same person stating the same preference twice counts once, while two
annotators agreeing stay two pairs (agreement is signal). A pair whose chosen
and rejected texts are equal is never produced.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

from ppolab.errors import FeedbackError

__all__ = ["pairs_from_feedback", "pairs_from_ratings", "load_ratings", "dedupe_pairs"]


def _pair(source: str, direction: str | None, chosen: str, rejected: str, origin: str,
          annotator: str | None, item_id: Any) -> dict[str, Any]:
    return {"source": source, "direction": direction, "chosen": chosen,
            "rejected": rejected, "origin": origin, "annotator": annotator,
            "item_id": item_id}


def dedupe_pairs(pairs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeated pairs (first kept, order preserved) and chosen == rejected."""
    seen: set[tuple] = set()
    out = []
    for p in pairs:
        if p["chosen"] == p["rejected"]:
            continue
        key = (p["annotator"], p["source"], p["direction"], p["chosen"], p["rejected"])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def pairs_from_feedback(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs from ``FeedbackStore.records()``-style dicts.

    Each record needs ``source``, ``direction``, ``candidates`` (list of
    ``{"text", ...}``), ``ranking`` (indices into candidates, best first),
    ``custom_translation`` (str or None), ``annotator`` and ``item_id``.
    """
    pairs = []
    for rec in records:
        texts = [c["text"] for c in rec["candidates"]]
        ranked = [texts[i] for i in rec["ranking"]]
        common = (rec["source"], rec["direction"])
        who = (rec["annotator"], rec["item_id"])
        for i, better in enumerate(ranked):
            for worse in ranked[i + 1:]:
                pairs.append(_pair(*common, better, worse, "ranking", *who))
        custom = rec.get("custom_translation")
        if custom:
            for shown in ranked:
                pairs.append(_pair(*common, custom, shown, "custom", *who))
    return dedupe_pairs(pairs)


def _check_rating(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
        raise FeedbackError(f"{where}: rating must be a number from 1 to 5, got {value!r}")
    return float(value)


def pairs_from_ratings(records: Iterable[dict[str, Any]], min_difference: float = 1,
                       default_direction: str | None = None) -> list[dict[str, Any]]:
    """Pairs from rated responses: ``[{source, direction?, responses: [{text, rating}]}]``.

    For every two responses to the same source, the strictly higher-rated one
    is chosen when the ratings differ by at least ``min_difference``. Optional
    per-record ``annotator`` and ``id`` fill the pair's annotator and item_id.
    """
    if min_difference <= 0:
        raise ValueError(f"min_difference must be > 0 (equal ratings say nothing), "
                         f"got {min_difference}")
    pairs = []
    for n, rec in enumerate(records):
        where = f"rating record {n}"
        if not isinstance(rec, dict):
            raise FeedbackError(f"{where}: must be an object, got {type(rec).__name__}")
        source = rec.get("source")
        if not isinstance(source, str) or not source.strip():
            raise FeedbackError(f"{where}: 'source' must be a non-empty string")
        direction = rec.get("direction", default_direction)
        responses = rec.get("responses")
        if not isinstance(responses, list):
            raise FeedbackError(f"{where}: 'responses' must be a list")
        rated = []
        for k, resp in enumerate(responses):
            if not isinstance(resp, dict) or not isinstance(resp.get("text"), str):
                raise FeedbackError(f"{where}, response {k}: needs a 'text' string and a 'rating'")
            text = resp["text"].strip()
            if text:
                rated.append((text, _check_rating(resp.get("rating"), f"{where}, response {k}")))
        # Best first, so pairs come out in a readable, deterministic order.
        rated.sort(key=lambda tr: -tr[1])
        for i, (better, r_better) in enumerate(rated):
            for worse, r_worse in rated[i + 1:]:
                if r_better - r_worse >= min_difference:
                    pairs.append(_pair(source.strip(), direction, better, worse, "rating",
                                       rec.get("annotator"), rec.get("id")))
    return dedupe_pairs(pairs)


def load_ratings(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a rating file (a JSON list of records) for ``pairs_from_ratings``."""
    from ppolab.io import read_utf8

    try:
        data = json.loads(read_utf8(path, "rating file"))
    except json.JSONDecodeError as e:
        raise FeedbackError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise FeedbackError(f"{path}: a rating file must hold a JSON list of records")
    return data
