"""The rule that splits the shipped corpus into train, valid and test.

`python -m ppolab.data.corpus_split` re-applies it to ppolab/data/corpus/*.tsv (after rows are
added or edited); tests/test_corpus_files.py checks that the shipped files follow it. The rule,
also described in DATA_CARD.md:

1. Related rows (a question and its reply, "Peace be upon you." and its answer) form one group
   (`RELATED`) and always land in the same split.
2. Within each domain, groups are ordered by English length in words (then id) and dealt out in
   runs of 9 rows: the row at slot 4 of a run goes to valid, slot 8 to test, the rest to train
   (about 78% / 11% / 11%). So each split gets short, middle and long sentences of every domain.
   A related group that lands on a held-out slot takes all its rows there, and that split then
   skips as many of its next slots. The runs start at a different slot in each domain, so the
   domains' longest rows do not all land in the same split.
3. Rare features (Arabic `؛`, `،`, digits) must reach every split: while a split lacks one, a
   row that has it moves there from the split holding most of them, swapped with the row of the
   same domain and closest length that has no rare feature.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

SPLITS = ("train", "valid", "test")
HEADER = "id\tdomain\teng\tfra\tarb"
RUN = 9
HELD_OUT = {4: "valid", 8: "test"}

# Rows that belong together: a reply must not be in a split its question is not in.
RELATED = (
    ("gre001", "gre004"), ("gre006", "gre007"), ("gre008", "gre009"), ("gre013", "gre014"),
    ("gre029", "gre030"), ("gre035", "gre036"), ("gre037", "gre038"), ("hea020", "hea021"),
    ("fam026", "fam027"), ("sho001", "sho002", "sho003"), ("sho011", "sho012"), ("tra025", "tra026"),
    ("num006", "num007"), ("wor018", "wor019"),
)
RARE = {
    "Arabic semicolon": lambda row: "؛" in row[4],
    "Arabic comma": lambda row: "،" in row[4],
    "digits": lambda row: any(ch.isdigit() for ch in row[4]),
}


def _words(row: list[str]) -> int:
    return len(row[2].split())


def _groups(rows: list[list[str]]) -> list[list[list[str]]]:
    by_id = {row[0]: row for row in rows}
    linked = {rid: group for group in RELATED for rid in group}
    out, seen = [], set()
    for row in rows:
        if row[0] in seen:
            continue
        ids = linked.get(row[0], (row[0],))
        seen.update(ids)
        out.append([by_id[i] for i in ids if i in by_id])
    return out


def _deal(rows: list[list[str]]) -> dict[str, str]:
    """Steps 1 and 2: groups by domain, by length, dealt out in runs of RUN rows."""
    split: dict[str, str] = {}
    domains = sorted({row[1] for row in rows})
    for n, domain in enumerate(domains):
        groups = [g for g in _groups(rows) if g[0][1] == domain]
        groups.sort(key=lambda g: (max(_words(r) for r in g), g[0][0]))
        slot = (2 * n) % RUN  # a different starting slot per domain
        owed = Counter()  # rows a held-out split got beyond its slots (a group of k rows takes k)
        for group in groups:
            slots = {(slot + k) % RUN for k in range(len(group))}
            target = next((HELD_OUT[s] for s in sorted(HELD_OUT) if s in slots), "train")
            if target != "train" and owed[target]:
                owed[target] -= 1  # this slot was paid for by an earlier group's extra rows
                target = "train"
            elif target != "train":
                owed[target] += len(group) - 1
            split.update({row[0]: target for row in group})
            slot = (slot + len(group)) % RUN
    return split


def _spread_rare_features(rows: list[list[str]], split: dict[str, str]) -> None:
    """Step 3: swap single rows until every split has every rare feature."""
    grouped = {rid for group in RELATED for rid in group}
    plain = [r for r in rows if r[0] not in grouped and not any(has(r) for has in RARE.values())]
    for name, has in RARE.items():
        while True:
            counts = Counter(split[r[0]] for r in rows if has(r))
            missing = [s for s in SPLITS if counts[s] == 0]
            if not missing:
                break
            donor = max(SPLITS, key=lambda s: (counts[s], s == "train"))
            if counts[donor] < 2:
                raise ValueError(f"too few rows with {name} to put one in every split")
            give = min((r for r in rows if has(r) and split[r[0]] == donor and r[0] not in grouped),
                       key=lambda r: (_words(r), r[0]))
            take = min((r for r in plain if r[1] == give[1] and split[r[0]] == missing[0]),
                       key=lambda r: (abs(_words(r) - _words(give)), r[0]))
            split[give[0]], split[take[0]] = missing[0], donor


def assign_splits(rows: list[list[str]]) -> dict[str, str]:
    """id -> split for the corpus rows `[id, domain, eng, fra, arb]`; deterministic."""
    split = _deal(rows)
    _spread_rare_features(rows, split)
    return split


def read_corpus(folder: Path) -> list[list[str]]:
    rows = []
    for name in SPLITS:
        lines = (folder / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
        rows += [line.split("\t") for line in lines[1:]]
    return rows


def write_splits(folder: Path) -> Counter:
    from ..io import atomic_open

    rows = read_corpus(folder)
    # The files list domains in the order of writing, and rows by id within a domain.
    order = {d: i for i, d in enumerate(dict.fromkeys(row[1] for row in rows))}
    rows.sort(key=lambda r: (order[r[1]], r[0]))
    split = assign_splits(rows)
    for name in SPLITS:
        with atomic_open(folder / f"{name}.tsv") as f:
            f.write("\n".join([HEADER] + ["\t".join(r) for r in rows if split[r[0]] == name]) + "\n")
    return Counter(split.values())


if __name__ == "__main__":
    print(dict(write_splits(Path(__file__).resolve().parent / "corpus")))
