"""A minimal JSON client of the feedback server's HTTP API (what the web page calls)."""
from __future__ import annotations

import json
import urllib.request


def request_json(url: str, payload: dict | None = None, timeout: float = 30) -> dict:
    """GET `url` (or POST `payload` as JSON) and return the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))
