"""The inspector page: `page.html` with the recorded rollouts embedded as JSON, one self-contained file."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic_open
from ..localhttp import page_csp
from .load import read_records

TEMPLATE = Path(__file__).with_name("page.html")


def rollouts_file(run: str | os.PathLike) -> Path:
    """`RUN/rollouts.jsonl` for a run directory; a file path is taken as is."""
    run = Path(run)
    return run / "rollouts.jsonl" if run.is_dir() else run


def embed_json(data) -> str:
    """JSON that is inert inside a <script> element: no `</script>`, no `<!--`, no NaN.

    `<`, `>` and `&` become \\u escapes, which JSON.parse reads back as the same characters.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(run: str | os.PathLike) -> str:
    """The whole page for the rollouts of `run` (a run directory or a rollouts.jsonl)."""
    path = rollouts_file(run)
    steps, rollouts = read_records(path)
    data = {"source": f"{path} · {len(steps)} steps · {len(rollouts)} rollouts", "steps": steps, "rollouts": rollouts}
    page = TEMPLATE.read_text(encoding="utf-8").replace("__PPOLAB_CSP__", page_csp(connect=False))
    head, tail = page.split("__PPOLAB_DATA__")  # exactly one placeholder; data goes in last, untouched
    return head + embed_json(data) + tail


def write_html(run: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the page as one static file (atomically); it opens from disk with no network."""
    out = Path(out)
    with atomic_open(out) as f:
        f.write(render_html(run))
    out.chmod(0o644)  # a page to share: the temp file it was written as is private
    return out
