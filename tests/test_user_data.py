"""The user's own corpus (ppolab.data.user): pairs, files of every format, held-out splits, bad input
as one `FILE:LINE` error through the CLI, prompt templates and few-shot examples for any pair."""
from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppolab.cli import main
from ppolab.data import (
    FEWSHOT_EXAMPLES, LANG_NAMES, CorpusError, TranslationExample, build_prompt, check_context, fewshot_from_examples,
    held_out, load_pairs, load_shipped_corpus, load_user_splits, parse_pairs,
)
from ppolab.errors import UserError

CODES = sorted(LANG_NAMES)
# Sentences as a user's file may hold them: any printable text without tabs, newlines or edge spaces.
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1, max_size=30)


def write(path, text):
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- pairs
@given(st.lists(st.tuples(st.sampled_from(CODES), st.sampled_from(CODES)).filter(lambda p: p[0] != p[1]),
                min_size=1, max_size=5, unique=True), st.sampled_from([",", ", ", " , "]))
def test_pairs_round_trip(pairs, sep):
    assert parse_pairs(sep.join(f"{s}->{t}" for s, t in pairs)) == pairs


@pytest.mark.parametrize("text, message", [
    ("", "expected e.g."), ("eng-arb", "expected SOURCE->TARGET"), ("eng->", "expected SOURCE->TARGET"),
    ("eng->arb->fra", "expected SOURCE->TARGET"), ("eng->xyz", "unknown code.*'xyz'"),
    ("fre->arb", "unknown code.*'fre'"), ("eng->eng", "two languages"), ("eng->arb,eng->arb", "given twice"),
])
def test_bad_pairs_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pairs(text)


# -------------------------------------------------------------------------------------- templates
@given(st.sampled_from(CODES), st.sampled_from(CODES), TEXT)
def test_a_prompt_for_any_pair_names_both_languages(src, tgt, source):
    if src == tgt:
        with pytest.raises(ValueError, match="two languages"):
            build_prompt(source, src, tgt)
        return
    prompt = build_prompt(source, src, tgt)
    assert prompt == f"Translate {LANG_NAMES[src]} to {LANG_NAMES[tgt]}:\n{source.strip()}\n{LANG_NAMES[tgt]}:"


def test_the_shipped_prompts_are_unchanged():
    assert build_prompt("Hi.", "eng", "arb") == "Translate English to Arabic:\nHi.\nArabic:"
    assert build_prompt("Salut.", "fra", "arb") == "Translate French to Arabic:\nSalut.\nArabic:"


class FewshotTok:
    chat_template = None
    bos_token = None
    ppolab_prompt_format = "fewshot"


def test_fewshot_examples_come_from_the_train_split_for_a_new_pair():
    train = [TranslationExample(f"Sentence {i}.", f"Phrase {i}.", "eng", "fra", str(i), f"t.tsv:{i + 2}")
             for i in range(6)] + [TranslationExample("Hi.", "مرحبا.", "eng", "arb", "a", "t.tsv:9")]
    shots = fewshot_from_examples(train, [("eng", "fra"), ("eng", "arb")])
    assert list(shots) == ["eng->fra"]  # eng->arb ships its own
    assert len(shots["eng->fra"]) == 3 and all(s.startswith("Sentence") for s, _ in shots["eng->fra"])
    assert shots == fewshot_from_examples(list(reversed(train)), [("eng", "fra")])  # stable, not file order
    tok = FewshotTok()
    tok.ppolab_fewshot = shots
    prompt = build_prompt("Good night.", "eng", "fra", tok)
    assert prompt.endswith("English: Good night.\nFrench:")
    assert all(f"English: {s}\nFrench: {t}\n" in prompt for s, t in shots["eng->fra"])
    assert "الطقس" not in prompt and FEWSHOT_EXAMPLES[("eng", "arb")][0][0] in build_prompt("x", "eng", "arb", tok)
    tok.ppolab_fewshot = None
    with pytest.raises(ValueError, match="no few-shot examples for eng->fra"):
        build_prompt("Good night.", "eng", "fra", tok)
    with pytest.raises(ValueError, match="no few-shot examples for deu->eng"):
        fewshot_from_examples(train, [("deu", "eng")])


def test_fewshot_examples_travel_with_a_saved_tokenizer(tmp_path):
    from ppolab.models.tokenizer import read_prompt_fewshot, read_prompt_format, save_prompt_format

    tok = FewshotTok()
    tok.ppolab_fewshot = {"eng->fra": [["Yes.", "Oui."]]}
    save_prompt_format(tok, tmp_path)
    assert read_prompt_format(tmp_path) == "fewshot" and read_prompt_fewshot(tmp_path) == tok.ppolab_fewshot

    class Loaded(FewshotTok):
        name_or_path = str(tmp_path)

    assert build_prompt("No.", "eng", "fra", Loaded()).startswith("English: Yes.\nFrench: Oui.\n")


# ----------------------------------------------------------------------------------- round trips
def _file(tmp_path, fmt, rows, direction=False):
    """rows: (id, source, target, pair) written as the format writes them."""
    cols = ["id", "source", "target"] + (["direction"] if direction else [])
    vals = [[i, s, t] + ([p] if direction else []) for i, s, t, p in rows]
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "tsv":
        write(path, "\n".join("\t".join(r) for r in [cols] + vals) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([cols] + vals)
        write(path, buf.getvalue())
    else:
        write(path, "".join(json.dumps(dict(zip(cols, v)), ensure_ascii=False) + "\n" for v in vals))
    return path


@given(st.sampled_from(["tsv", "csv", "jsonl"]), st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=8),
       st.booleans())
def test_user_files_round_trip(tmp_path_factory, fmt, texts, direction):
    tmp_path = tmp_path_factory.mktemp("c")
    pairs = [("eng", "fra"), ("deu", "eng")] if direction else [("eng", "fra")]
    rows = [(f"r{k}", s, t, "->".join(pairs[k % len(pairs)])) for k, (s, t) in enumerate(texts)]
    got = load_pairs(_file(tmp_path, fmt, rows, direction), pairs)
    assert [(ex.id, ex.source, ex.target, ex.direction) for ex in got] == [
        (i, s.strip(), t.strip(), p) for i, s, t, p in rows]


def test_a_three_way_file_gives_each_named_pair_in_row_order(tmp_path):
    path = write(tmp_path / "c.tsv", "id\teng\tfra\tarb\na\tYes.\tOui.\tنعم.\nb\tNo.\tNon.\tلا.\n")
    got = load_pairs(path, "eng->arb,eng->fra")
    assert [(ex.id, ex.direction) for ex in got] == [("a", "eng->arb"), ("a", "eng->fra"), ("b", "eng->arb"),
                                                     ("b", "eng->fra")]


def test_the_default_is_the_shipped_corpus_exactly():
    splits = load_user_splits()
    assert all(splits[s] == list(load_shipped_corpus(s)) for s in ("train", "valid", "test"))
    # Another pair of the shipped columns needs no file of its own.
    assert {ex.direction for ex in load_user_splits(pairs="eng->fra")["train"]} == {"eng->fra"}


@given(st.lists(TEXT, min_size=1, max_size=40, unique=True), st.floats(0, 0.4), st.floats(0, 0.4))
def test_held_out_splits_partition_the_rows_stably(sources, valid_fraction, test_fraction):
    rows = [TranslationExample(s, "t", "eng", "fra", str(k), f"f.tsv:{k + 2}") for k, s in enumerate(sources)]
    split = held_out(rows, valid_fraction, test_fraction)
    assert sorted(ex.id for part in split.values() for ex in part) == sorted(ex.id for ex in rows)
    # A row's split depends on its source only: dropping other rows moves nothing.
    half = held_out(rows[::2], valid_fraction, test_fraction)
    assert all(set(half[s]) <= set(split[s]) for s in split)


def test_a_three_way_row_never_splits_its_target(tmp_path):
    lines = ["id\teng\tfra\tarb"] + [f"r{k}\tSentence {k}.\tPhrase {k}.\tجملة {k}." for k in range(60)]
    path = write(tmp_path / "c.tsv", "\n".join(lines) + "\n")
    split = load_user_splits(path, pairs="eng->arb,fra->arb", valid_fraction=0.2, test_fraction=0.2)
    where = {}
    for name, rows in split.items():
        for ex in rows:
            assert where.setdefault(ex.id, name) == name
    assert all(split[s] for s in split)


def test_a_valid_file_is_used_as_given_and_test_is_held_out(tmp_path):
    train = _file(tmp_path, "tsv", [(f"r{k}", f"Sentence {k}.", f"Phrase {k}.", "") for k in range(50)])
    valid = write(tmp_path / "valid.tsv", "source\ttarget\nHello.\tBonjour.\n")
    split = load_user_splits(train, valid=valid, pairs="eng->fra", test_fraction=0.2)
    assert [ex.source for ex in split["valid"]] == ["Hello."]
    assert split["test"] and len(split["train"]) + len(split["test"]) == 50


# ------------------------------------------------------------------------------------- bad input
BAD = [
    ("missing column", "id\tsource\n1\tHello.\n", "eng->fra", r"c\.tsv:1: missing column for target"),
    ("empty source", "source\ttarget\nHello.\tBonjour.\n \tRien.\n", "eng->fra", r"c\.tsv:3: field 'source' is empty"),
    ("invalid UTF-8", b"source\ttarget\nHello.\tBonjour.\nCaf\xe9.\tCaf\xe9.\n", "eng->fra",
     r"c\.tsv:3: invalid UTF-8"),
    ("duplicate id", "id\tsource\ttarget\na\tYes.\tOui.\na\tNo.\tNon.\n", "eng->fra",
     r"c\.tsv:3: duplicate id 'a' for eng->fra: line 2"),
    ("pair not in the list", "source\ttarget\tdirection\nYes.\tOui.\teng->fra\nJa.\tYes.\tdeu->eng\n", "eng->fra",
     r"c\.tsv:3: language pair 'deu->eng' is not in the pair list \(eng->fra; set data.pairs\)"),
    ("bad direction", "source\ttarget\tdirection\nYes.\tOui.\teng fra\n", "eng->fra",
     r"c\.tsv:2: field 'direction' is 'eng fra': expected SOURCE->TARGET"),
    ("generic columns, two pairs", "source\ttarget\nYes.\tOui.\n", "eng->fra,deu->fra",
     r"c\.tsv: its source/target columns name no language and the pair list names 2 pairs"),
]


@pytest.mark.parametrize("what, content, pairs, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_user_error_naming_file_and_line(tmp_path, what, content, pairs, message):
    path = write(tmp_path / "c.tsv", content)
    with pytest.raises(UserError, match=message):
        load_pairs(path, pairs)


def test_the_cli_prints_one_line_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path / "c.tsv", "id\tsource\ttarget\na\tYes.\tOui.\na\tNo.\tNon.\n")
    out = tmp_path / "run"
    code = main(["demo", "--out", str(out), "--set", f"data.train={path}", "--set", "data.pairs=eng->fra"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"error: {path}:3: duplicate id 'a' for eng->fra: line 2 has it too"]
    assert not out.exists() or not any(p.name != "run.json" for p in out.iterdir())


def test_a_source_over_the_context_is_named(tmp_path):
    from ppolab.models import build_tokenizer

    path = write(tmp_path / "c.tsv", "source\ttarget\nShort.\tCourt.\n" + "word " * 200 + "\tmot\n")
    rows = load_pairs(path, "eng->fra")
    tok = build_tokenizer(["Short word Court mot"], vocab_size=300)
    check_context(rows[:1], tok, context=256, max_new_tokens=48)
    with pytest.raises(CorpusError, match=r"c\.tsv:3: source is too long for the model: its prompt is \d+ tokens, "
                                          r"and a 256-token context leaves 208"):
        check_context(rows, tok, context=256, max_new_tokens=48)


def test_an_unknown_pair_code_is_a_user_error():
    with pytest.raises(UserError, match="data.pairs: language pair eng->xx: unknown code"):
        load_user_splits(pairs="eng->xx")
