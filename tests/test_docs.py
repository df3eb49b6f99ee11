"""Every relative link in the README (and in docs/) points at a file that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(md: Path) -> list[str]:
    return [t for t in LINK.findall(md.read_text(encoding="utf-8"))
            if not t.startswith(("http://", "https://", "mailto:", "#"))]


def test_link_finder_sees_links(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("[a](docs/a.md) [b](https://x.org) [c](#top) ![d](img/p.png#frag)")
    assert relative_links(md) == ["docs/a.md", "img/p.png#frag"]


@pytest.mark.parametrize("md", [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(md):
    missing = [t for t in relative_links(md) if not (md.parent / t.split("#")[0]).exists()]
    assert not missing, f"{md.relative_to(ROOT)}: links to missing files {missing}"


def test_readme_is_short_and_keeps_the_quick_start():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert "uv run ppolab demo" in text and ci.split(" pytest")[0] in text
