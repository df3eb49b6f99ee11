"""Fast structural checks on the shipped EN/FR -> AR corpus (plain Python; the split rule from ppolab)."""
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


def test_files_follow_the_split_rule(corpus):
    """The shipped files are what ppolab.data.corpus_split's rule makes of their rows."""
    from ppolab.data.corpus_split import assign_splits

    rows = [row for split in SPLITS for row in corpus[split]]
    rule = assign_splits(rows)
    wrong = [(row[0], split, rule[row[0]]) for split in SPLITS for row in corpus[split] if rule[row[0]] != split]
    assert not wrong, f"rows not where the rule puts them (id, file, rule): {wrong[:10]}"
    for split, rows in corpus.items():
        ids = [row[0] for row in rows]
        order = list(dict.fromkeys(row[1] for row in rows))
        assert ids == sorted(ids, key=lambda i: (order.index(next(r[1] for r in rows if r[0] == i)), i)), split


def test_related_rows_share_a_split(corpus):
    from ppolab.data.corpus_split import RELATED

    where = {row[0]: split for split, rows in corpus.items() for row in rows}
    assert ("gre035", "gre036") in RELATED  # "Peace be upon you." and its reply
    for group in RELATED:
        assert len({where[i] for i in group}) == 1, f"{group} are split across {[where[i] for i in group]}"


def test_every_split_has_each_rare_feature_and_long_rows(corpus):
    features = {"Arabic semicolon": lambda r: "؛" in r[4], "Arabic comma": lambda r: "،" in r[4],
                "digits": lambda r: re.search(r"[0-9]", r[4]), "question": lambda r: r[2].endswith("?")}
    for split, rows in corpus.items():
        for name, has in features.items():
            assert any(has(r) for r in rows), f"{split} has no row with {name}"
    # The longest row of each domain: spread over the splits, not all in one.
    longest = {}
    for split, rows in corpus.items():
        for r in rows:
            if len(r[2].split()) > longest.get(r[1], (0, ""))[0]:
                longest[r[1]] = (len(r[2].split()), split)
    assert len({split for _, split in longest.values()}) == 3, longest


def test_held_out_splits_cover_the_length_range_of_each_domain(corpus):
    lengths = {split: [len(r[2].split()) for r in rows] for split, rows in corpus.items()}
    for split in ("valid", "test"):
        assert min(lengths[split]) <= 4 and max(lengths[split]) >= 14, (split, sorted(lengths[split]))
        assert abs(sorted(lengths[split])[len(lengths[split]) // 2]
                   - sorted(lengths["train"])[len(lengths["train"]) // 2]) <= 1
    for domain in {r[1] for rows in corpus.values() for r in rows}:
        n = {s: sum(r[1] == domain for r in rows) for s, rows in corpus.items()}
        assert 4 <= n["valid"] <= 7 and 4 <= n["test"] <= 7, (domain, n)


@pytest.mark.parametrize("rid, column, text", [
    ("que018", 4, "هل هو بعيد عن هنا؟"), ("que009", 4, "هل تناولت طعامك بعد؟"),
    ("sho003", 4, "هل لديكم منه مقاس أصغر؟"), ("gre020", 4, "كيف كانت عطلة نهاية أسبوعك؟"),
    ("gre030", 4, "نعم، هذا أنا"), ("wea022", 4, "الجو أشد حرًا من أن نخرج عند الظهر"),
    ("tra029", 4, "بوابة الصعود رقم 12"), ("tra029", 3, "est la porte 12"), ("tra039", 4, "مكتب الاستقبال"),
    ("nws019", 4, "شخصين مشتبهًا بهما"), ("nws034", 4, "عن تسعين عامًا"), ("foo036", 4, "في العشاء"),
    ("num008", 3, "La formation dure quinze jours"), ("tra045", 3, "samedi matin prochain"),
    ("fam010", 4, "أجداد"), ("fam028", 4, "أجداد"), ("tec018", 4, "أجداد"),
], ids=lambda v: v if isinstance(v, str) and v.isascii() and len(v) == 6 else "")
def test_reviewed_wordings(corpus, rid, column, text):
    (row,) = [r for rows in corpus.values() for r in rows if r[0] == rid]
    assert text in row[column], row


def test_passive_yurja_has_its_damma(corpus):
    for rows in corpus.values():
        for r in rows:
            assert not re.search(r"(^|\s)يرجى", r[4]), f"{r[0]}: write يُرجى (passive), as elsewhere"
