"""The demo's simulated annotator: ranks candidates by sentence chrF against the reference."""
from __future__ import annotations

import uuid

from ..metrics import sentence_chrf
from .client import request_json


def simulate_annotator(url: str, references: dict, name: str = "simulated-chrf", custom_every: int = 0) -> int:
    """Annotate every item through the same HTTP API as the web page.

    The simulated annotator ranks the shown candidates by sentence chrF against the reference,
    and every `custom_every`-th item it also writes the reference as a better translation.
    """
    done = 0
    while True:
        item = request_json(f"{url}/api/next?annotator={name}")
        if item.get("done"):
            return done
        ref = references[(item["source"], item["direction"])]
        cands = item["candidates"]
        chrf = sentence_chrf([c["text"] for c in cands], [ref] * len(cands))
        ranking = [c["index"] for _, c in sorted(zip(chrf, cands), key=lambda x: -x[0])]
        custom = ref if custom_every and done % custom_every == 0 else None
        request_json(f"{url}/api/submit", {"item_id": item["item_id"], "annotator": name, "ranking": ranking,
                                    "custom_translation": custom, "submission_id": str(uuid.uuid4())})
        done += 1
