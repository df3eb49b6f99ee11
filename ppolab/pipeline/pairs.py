"""Preference rows as the reward model trains on them, and the stable split by key."""
from __future__ import annotations

import zlib

from .models import as_response


def bucket(key: str, fraction: float) -> bool:
    """A stable pseudo-random split by key: the same source always lands on the same side."""
    return (zlib.crc32(key.encode("utf-8")) % 10_000) < fraction * 10_000


def rm_pair(p: dict) -> dict:
    """A preference row as the reward model trains on it: prompt + response exactly as in PPO."""
    out = {"prompt": p["prompt"], "chosen": as_response(p["chosen"]), "rejected": as_response(p["rejected"])}
    if "chosen_score" in p and "rejected_score" in p:
        out["chosen_score"], out["rejected_score"] = p["chosen_score"], p["rejected_score"]
    return out


def reference_pairs(pairs: list[dict]) -> list[dict]:
    """Reference-anchored pairs: each source's reference is preferred over every rejected sample.

    The reference is a human translation, so it scores 1.0 on any reference-based metric.
    """
    out, seen = [], set()
    for p in pairs:
        key = (p["prompt"], p["rejected"])
        if key in seen or p["rejected"].strip() == p["reference"].strip():
            continue
        seen.add(key)
        out.append(rm_pair({"prompt": p["prompt"], "chosen": p["reference"], "rejected": p["rejected"],
                             "chosen_score": 1.0, "rejected_score": p.get("rejected_score", 0.0)}))
    return out
