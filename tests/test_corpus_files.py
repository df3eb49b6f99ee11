"""Fast structural checks on the shipped EN/FR -> AR corpus (plain Python, no ppolab imports)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

CORPUS_DIR = Path(__file__).resolve().parents[1] / "ppolab" / "data" / "corpus"
SPLITS = ("train", "valid", "test")
HEADER = ["id", "domain", "eng", "fra", "arb"]
ARABIC = re.compile(r"[\u0600-\u06FF]")


def _read(split: str) -> tuple[list[str], list[list[str]]]:
    raw = (CORPUS_DIR / f"{split}.tsv").read_bytes()
    text = raw.decode("utf-8")
    assert not text.startswith("\ufeff"), f"{split}.tsv starts with a BOM"
    assert "\r" not in text, f"{split}.tsv has CR line endings"
    assert text.endswith("\n"), f"{split}.tsv does not end with a newline"
    lines = text[:-1].split("\n")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[list[str]]]:
    out = {}
    for split in SPLITS:
        header, rows = _read(split)
        assert header == HEADER, f"{split}.tsv header is {header!r}"
        out[split] = rows
    return out


def test_rows_have_five_clean_fields(corpus):
    for split, rows in corpus.items():
        for n, row in enumerate(rows, start=2):
            assert len(row) == 5, f"{split}.tsv line {n}: {len(row)} fields"
            for name, field in zip(HEADER, row):
                assert field, f"{split}.tsv line {n}: empty {name}"
                assert field == field.strip(), f"{split}.tsv line {n}: whitespace around {name}"


def test_ids_are_unique_across_splits(corpus):
    ids = Counter(row[0] for rows in corpus.values() for row in rows)
    dups = [i for i, c in ids.items() if c > 1]
    assert not dups, f"duplicate ids: {dups}"
    for rows in corpus.values():
        for row in rows:
            assert re.fullmatch(r"[a-z]{3}\d{3}", row[0]), row[0]


def test_no_duplicate_sentences(corpus):
    for col, name in ((2, "eng"), (3, "fra"), (4, "arb")):
        seen = Counter(row[col] for rows in corpus.values() for row in rows)
        dups = [s for s, c in seen.items() if c > 1]
        assert not dups, f"duplicate {name} sentences: {dups[:5]}"


def test_scripts_and_arabic_punctuation(corpus):
    for split, rows in corpus.items():
        for row in rows:
            rid, _, eng, fra, arb = row
            assert ARABIC.search(arb), f"{split} {rid}: arb has no Arabic letters"
            assert not ARABIC.search(eng), f"{split} {rid}: eng contains Arabic letters"
            assert not ARABIC.search(fra), f"{split} {rid}: fra contains Arabic letters"
            assert not re.search(r"[,?;]", arb), f"{split} {rid}: arb uses Latin , ? or ;"
            assert eng.endswith("?") == arb.endswith("؟"), f"{split} {rid}: question mark mismatch"


def test_size_and_every_domain_in_every_split(corpus):
    total = sum(len(rows) for rows in corpus.values())
    assert total >= 500, total
    domains = {row[1] for rows in corpus.values() for row in rows}
    assert len(domains) >= 10, sorted(domains)
    for split, rows in corpus.items():
        missing = domains - {row[1] for row in rows}
        assert not missing, f"{split} lacks domains {sorted(missing)}"
    assert len(corpus["train"]) > len(corpus["valid"]) + len(corpus["test"])
