"""Tests for ppolab.data: corpus loaders (every format, bad input) and prompt templates."""
from __future__ import annotations

import json
import logging
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppolab.data import (
    LANG_NAMES,
    PROMPT_TEMPLATES,
    CorpusError,
    LoadResult,
    SkippedRow,
    TranslationExample,
    build_prompt,
    load_parallel,
    load_shipped_corpus,
    shipped_corpus_dir,
)

EN1, FR1, AR1 = "Good morning.", "Bonjour.", "صباح الخير."
EN2, FR2, AR2 = "Thank you very much.", "Merci beaucoup.", "شكرا جزيلا."


def write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pairs(examples):
    return [(ex.direction, ex.source, ex.target) for ex in examples]


# ------------------------------------------------------------------ record type


def test_translation_example_is_frozen_with_direction():
    ex = TranslationExample("Hi", "مرحبا", "eng", "arb", "x1", "f.tsv:2")
    assert ex.direction == "eng->arb"
    with pytest.raises(AttributeError):
        ex.source = "other"  # type: ignore[misc]


# --------------------------------------------------------------------- formats


def test_headerless_tsv_seed_file(tmp_path):
    path = write(tmp_path / "seeds.tsv", f"{EN1}\t{AR1}\n{EN2}\t{AR2}\n\n")
    result = load_parallel(path)
    assert isinstance(result, LoadResult) and isinstance(result, list)
    assert pairs(result) == [("eng->arb", EN1, AR1), ("eng->arb", EN2, AR2)]
    assert result[0].origin == f"{path}:1" and result[1].origin == f"{path}:2"
    assert result[0].id == "seeds-1"
    assert result.skipped == []


def test_headerless_txt_and_crlf(tmp_path):
    path = write(tmp_path / "seeds.txt", f"{EN1}\t{AR1}\r\n{EN2}\t{AR2}\r\n".encode())
    assert pairs(load_parallel(path)) == [("eng->arb", EN1, AR1), ("eng->arb", EN2, AR2)]


def test_headerless_source_language_from_filename_or_src(tmp_path):
    path = write(tmp_path / "fra-arb.tsv", f"{FR1}\t{AR1}\n")
    assert load_parallel(path)[0].direction == "fra->arb"
    other = write(tmp_path / "seeds_b.tsv", f"{FR1}\t{AR1}\n")
    assert load_parallel(other, src="fra")[0].direction == "fra->arb"
    assert load_parallel(other, src="fr")[0].src_lang == "fra"  # aliases accepted


def test_flores_style_three_way_tsv_yields_both_directions(tmp_path):
    path = write(tmp_path / "flores.tsv", f"id\teng\tfra\tarb\n7\t{EN1}\t{FR1}\t{AR1}\n8\t{EN2}\t{FR2}\t{AR2}\n")
    result = load_parallel(path)
    assert pairs(result) == [
        ("eng->arb", EN1, AR1),
        ("fra->arb", FR1, AR1),
        ("eng->arb", EN2, AR2),
        ("fra->arb", FR2, AR2),
    ]
    assert [ex.id for ex in result] == ["7", "7", "8", "8"]
    assert result[2].origin == f"{path}:3"
    assert pairs(load_parallel(path, src="eng")) == [("eng->arb", EN1, AR1), ("eng->arb", EN2, AR2)]
    assert pairs(load_parallel(path, src="fra")) == [("fra->arb", FR1, AR1), ("fra->arb", FR2, AR2)]


def test_shipped_layout_with_domain_column(tmp_path):
    path = write(
        tmp_path / "train.tsv",
        f"id\tdomain\teng\tfra\tarb\nd-1\tnews\t{EN1}\t{FR1}\t{AR1}\n",
    )
    result = load_parallel(path, format="tsv")
    assert pairs(result) == [("eng->arb", EN1, AR1), ("fra->arb", FR1, AR1)]
    assert {ex.id for ex in result} == {"d-1"}


def test_tsv_has_no_quote_handling(tmp_path):
    # csv would treat the leading quote as opening a quoted field and eat the tab.
    en = '"Stop," he said.'
    ar = '"توقف"، قال.'
    path = write(tmp_path / "quotes.tsv", f"eng\tarb\n{en}\t{ar}\n\"Yes\tنعم\n")
    assert pairs(load_parallel(path)) == [("eng->arb", en, ar), ("eng->arb", '"Yes', "نعم")]


# Any single-line sentence survives a TSV round trip, quotes and all; only the
# padding around it is removed.
_sentence = st.text(min_size=1).filter(
    lambda s: "\t" not in s and "\n" not in s and "\r" not in s
    and s == s.strip() and s[0] not in "\ufeff\u200b" and s[-1] not in "\ufeff\u200b"
)
_padding = st.text(alphabet=" \u00a0\u202f\u3000", max_size=3)


@given(source=_sentence, target=_sentence, pad=_padding)
def test_tsv_round_trip_property(tmp_path_factory, source, target, pad):
    path = tmp_path_factory.mktemp("prop") / "p.tsv"
    write(path, f"eng\tarb\n{pad}{source}{pad}\t{target}{pad}\n")
    [example] = load_parallel(path)
    assert (example.source, example.target) == (source, target)


def test_whitespace_and_nbsp_are_stripped(tmp_path):
    path = write(tmp_path / "ws.tsv", f"eng\tfra\tarb\n\u00a0 {EN1}\u00a0\t{FR1}\u202f\t\ufeff {AR1}\u200b \n")
    result = load_parallel(path)
    assert pairs(result) == [("eng->arb", EN1, AR1), ("fra->arb", FR1, AR1)]


def test_utf8_bom_before_header(tmp_path):
    path = write(tmp_path / "bom.tsv", ("\ufeffeng\tarb\n" + f"{EN1}\t{AR1}\n").encode())
    assert pairs(load_parallel(path)) == [("eng->arb", EN1, AR1)]


def test_csv_with_quotes_and_multiline_field(tmp_path):
    path = write(
        tmp_path / "data.csv",
        f'id,english,arabic\n1,"Hello, world",مرحبا بالعالم\n2,"Line one\nline two",{AR2}\n3,{EN1},{AR1}\n',
    )
    result = load_parallel(path)
    assert pairs(result) == [
        ("eng->arb", "Hello, world", "مرحبا بالعالم"),
        ("eng->arb", "Line one\nline two", AR2),
        ("eng->arb", EN1, AR1),
    ]
    # Origins point at the line each record starts on.
    assert [ex.origin.rsplit(":", 1)[1] for ex in result] == ["2", "3", "5"]


def test_jsonl(tmp_path):
    lines = [
        {"id": 1, "en": EN1, "fr": FR1, "ar": AR1},
        {"id": 2, "en": EN2, "fr": FR2, "ar": AR2},
    ]
    path = write(tmp_path / "data.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    result = load_parallel(path)
    assert pairs(result) == [
        ("eng->arb", EN1, AR1),
        ("fra->arb", FR1, AR1),
        ("eng->arb", EN2, AR2),
        ("fra->arb", FR2, AR2),
    ]
    assert result[0].id == "1" and result[3].origin == f"{path}:2"


def test_jsonl_nested_translation_field(tmp_path):
    path = write(tmp_path / "opus.jsonl", json.dumps({"translation": {"en": EN1, "ar": AR1}}) + "\n")
    assert pairs(load_parallel(path)) == [("eng->arb", EN1, AR1)]


def test_datasets_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "hf_dir"
    datasets.Dataset.from_dict({"eng": [EN1, EN2], "fra": [FR1, FR2], "arb": [AR1, AR2]}).save_to_disk(
        str(directory)
    )
    result = load_parallel(directory)
    assert pairs(result) == [
        ("eng->arb", EN1, AR1),
        ("fra->arb", FR1, AR1),
        ("eng->arb", EN2, AR2),
        ("fra->arb", FR2, AR2),
    ]
    assert result[2].origin == f"{directory}:2"


def test_datasets_dataset_dict_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    one = datasets.Dataset.from_dict({"source": [EN1], "target": [AR1]})
    single, multi = tmp_path / "single", tmp_path / "multi"
    datasets.DatasetDict({"train": one}).save_to_disk(str(single))
    datasets.DatasetDict({"train": one, "test": one}).save_to_disk(str(multi))
    assert pairs(load_parallel(single)) == [("eng->arb", EN1, AR1)]
    with pytest.raises(CorpusError, match="splits"):
        load_parallel(multi)
    assert pairs(load_parallel(multi / "test")) == [("eng->arb", EN1, AR1)]


def test_json_and_parquet_via_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"id": ["a", "b"], "english": [EN1, EN2], "arabic": [AR1, AR2]}
    json_path = write(
        tmp_path / "data.json",
        json.dumps([{"id": i, "english": e, "arabic": a} for i, e, a in zip(*rows.values())], ensure_ascii=False),
    )
    parquet_path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(parquet_path))
    expected = [("eng->arb", EN1, AR1), ("eng->arb", EN2, AR2)]
    for path in (json_path, parquet_path):
        result = load_parallel(path)
        assert pairs(result) == expected
        assert [ex.id for ex in result] == ["a", "b"]


def test_format_argument_overrides_extension(tmp_path):
    path = write(tmp_path / "corpus.data", f"eng\tarb\n{EN1}\t{AR1}\n")
    with pytest.raises(ValueError, match="format="):
        load_parallel(path)
    assert pairs(load_parallel(path, format="tsv")) == [("eng->arb", EN1, AR1)]
    with pytest.raises(ValueError, match="unknown format"):
        load_parallel(path, format="xml")


# ------------------------------------------------------------ column detection


@pytest.mark.parametrize(
    "header",
    ["eng\tarb", "EN\tAR", "English\tArabic", "source\ttarget", "src\ttgt", "eng_Latn\tarb_Arab"],
)
def test_column_aliases(tmp_path, header):
    path = write(tmp_path / "c.tsv", f"{header}\n{EN1}\t{AR1}\n")
    assert pairs(load_parallel(path)) == [("eng->arb", EN1, AR1)]


def test_language_columns_win_over_generic_ones(tmp_path):
    # "source" here is provenance metadata, not text: the "eng" column wins.
    path = write(tmp_path / "c.tsv", f"source\teng\tarb\nweb\t{EN1}\t{AR1}\n")
    assert pairs(load_parallel(path)) == [("eng->arb", EN1, AR1)]


def test_explicit_columns(tmp_path):
    path = write(tmp_path / "c.tsv", f"key\ttext_a\ttext_b\ttext_c\nk1\t{EN1}\t{FR1}\t{AR1}\n")
    result = load_parallel(path, columns={"eng": "text_a", "fra": "text_b", "arb": "text_c", "id": "key"})
    assert pairs(result) == [("eng->arb", EN1, AR1), ("fra->arb", FR1, AR1)]
    assert result[0].id == "k1"
    only_fr = load_parallel(path, src="fra", columns={"fra": "text_b", "arb": "text_c"})
    assert pairs(only_fr) == [("fra->arb", FR1, AR1)]


def test_explicit_column_overrides_alias(tmp_path):
    path = write(tmp_path / "c.tsv", f"eng\teng_clean\tarb\nraw text\t{EN1}\t{AR1}\n")
    result = load_parallel(path, columns={"eng": "eng_clean"})
    assert pairs(result) == [("eng->arb", EN1, AR1)]


def test_ambiguous_columns_are_an_error(tmp_path):
    path = write(tmp_path / "amb.tsv", f"en\tenglish\tarb\n{EN1}\t{EN1}\t{AR1}\n")
    with pytest.raises(CorpusError, match=r"amb\.tsv:1: ambiguous eng"):
        load_parallel(path)


def test_src_equal_tgt_rejected(tmp_path):
    path = write(tmp_path / "c.tsv", f"eng\tarb\n{EN1}\t{AR1}\n")
    with pytest.raises(ValueError, match="both 'arb'"):
        load_parallel(path, src="ar")


# ------------------------------------------------------------------- bad input


def assert_names(err: CorpusError, path, line: int, field: str | None):
    message = str(err)
    assert path.name in message
    assert f":{line}:" in message or f"row {line}" in message
    assert err.line == line
    if field is not None:
        assert f"'{field}'" in message
        assert err.field == field


def test_malformed_row_too_few_fields(tmp_path):
    path = write(tmp_path / "few.tsv", f"id\teng\tfra\tarb\n1\t{EN1}\t{FR1}\t{AR1}\n2\t{EN2}\t{FR2}\n")
    with pytest.raises(CorpusError) as info:
        load_parallel(path)
    assert_names(info.value, path, 3, "arb")
    assert "expected 4 fields" in str(info.value) and "found 3" in str(info.value)


def test_malformed_row_extra_field(tmp_path):
    path = write(tmp_path / "extra.tsv", f"{EN1}\t{AR1}\n{EN2}\t{AR2}\tstray\n")
    with pytest.raises(CorpusError, match="extra field") as info:
        load_parallel(path)
    assert_names(info.value, path, 2, "target")


@pytest.mark.parametrize("empty", ["", "   ", "\u00a0"])
def test_empty_field(tmp_path, empty):
    path = write(tmp_path / "empty.tsv", f"id\teng\tfra\tarb\n1\t{EN1}\t{FR1}\t{AR1}\n2\t{EN2}\t{empty}\t{AR2}\n")
    with pytest.raises(CorpusError, match="is empty") as info:
        load_parallel(path)
    assert_names(info.value, path, 3, "fra")


def test_empty_field_in_unused_column_is_fine(tmp_path):
    path = write(tmp_path / "partial.tsv", f"eng\tfra\tarb\n{EN1}\t\t{AR1}\n")
    assert pairs(load_parallel(path, src="eng")) == [("eng->arb", EN1, AR1)]


def test_missing_column(tmp_path):
    path = write(tmp_path / "nocol.tsv", f"id\teng\tfra\n1\t{EN1}\t{FR1}\n")
    with pytest.raises(CorpusError, match="missing column for target language 'arb'") as info:
        load_parallel(path)
    assert_names(info.value, path, 1, "arb")
    assert "columns present: id, eng, fra" in str(info.value)


def test_missing_source_column_for_requested_src(tmp_path):
    path = write(tmp_path / "nofra.tsv", f"eng\tarb\n{EN1}\t{AR1}\n")
    with pytest.raises(CorpusError) as info:
        load_parallel(path, src="fra")
    assert_names(info.value, path, 1, "fra")


def test_missing_explicit_column(tmp_path):
    path = write(tmp_path / "c.tsv", f"eng\tarb\n{EN1}\t{AR1}\n")
    with pytest.raises(CorpusError, match="missing column 'english_text'") as info:
        load_parallel(path, columns={"eng": "english_text"})
    assert_names(info.value, path, 1, "english_text")


def test_invalid_utf8(tmp_path):
    data = f"eng\tarb\n{EN1}\t{AR1}\n".encode() + b"bad \xff\xfe bytes\t" + AR2.encode() + b"\n"
    path = write(tmp_path / "latin.tsv", data)
    with pytest.raises(CorpusError, match="invalid UTF-8") as info:
        load_parallel(path)
    assert_names(info.value, path, 3, None)
    # The same in a CSV is reported on its line too.
    csv_path = write(tmp_path / "latin.csv", data.replace(b"\t", b","))
    with pytest.raises(CorpusError, match="invalid UTF-8") as info:
        load_parallel(csv_path)
    assert_names(info.value, csv_path, 3, None)


def test_jsonl_bad_records(tmp_path):
    good = json.dumps({"en": EN1, "ar": AR1}, ensure_ascii=False)
    path = write(
        tmp_path / "bad.jsonl",
        "\n".join([good, "{not json", json.dumps({"en": EN2}), json.dumps({"en": 5, "ar": AR2}), "[1, 2]"]) + "\n",
    )
    with pytest.raises(CorpusError, match="invalid JSON") as info:
        load_parallel(path)
    assert_names(info.value, path, 2, None)
    result = load_parallel(path, skip_bad=True)
    assert pairs(result) == [("eng->arb", EN1, AR1)]
    lines = [s.line for s in result.skipped]
    assert lines == [2, 3, 4, 5]
    assert "field 'ar' is missing" in result.skipped[1].reason
    assert "must be a string" in result.skipped[2].reason
    assert "JSON object" in result.skipped[3].reason


def test_datasets_row_with_null_is_reported_by_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "nulls"
    datasets.Dataset.from_dict({"eng": [EN1, None], "arb": [AR1, AR2]}).save_to_disk(str(directory))
    with pytest.raises(CorpusError, match="null") as info:
        load_parallel(directory)
    assert_names(info.value, directory, 2, "eng")


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        load_parallel(tmp_path / "nope.tsv")
    with pytest.raises(CorpusError, match="empty"):
        load_parallel(write(tmp_path / "empty.tsv", ""))
    with pytest.raises(CorpusError, match="no usable rows"):
        load_parallel(write(tmp_path / "header_only.tsv", "eng\tarb\n"))


def test_corpus_error_is_value_error_and_pickles(tmp_path):
    err = CorpusError(tmp_path / "x.tsv", 4, "field 'arb' is empty", field="arb")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.line == 4 and copy.field == "arb"


# -------------------------------------------------------------------- skip_bad


def test_skip_bad_counts_every_skipped_row(tmp_path, caplog):
    path = write(
        tmp_path / "mixed.tsv",
        (
            f"id\teng\tfra\tarb\n"
            f"1\t{EN1}\t{FR1}\t{AR1}\n"  # line 2: good
            f"2\t{EN2}\t{FR2}\n"  # line 3: too few fields
            f"3\t{EN2}\t\t{AR2}\n"  # line 4: empty fra -> whole row skipped
        ).encode()
        + b"4\t\xc3(\tx\ty\n"  # line 5: invalid UTF-8
        + f"5\t{EN2}\t{FR2}\t{AR2}\n".encode(),  # line 6: good
    )
    with caplog.at_level(logging.WARNING, logger="ppolab.data.loaders"):
        result = load_parallel(path, skip_bad=True)
    assert pairs(result) == [
        ("eng->arb", EN1, AR1),
        ("fra->arb", FR1, AR1),
        ("eng->arb", EN2, AR2),
        ("fra->arb", FR2, AR2),
    ]
    assert [s.line for s in result.skipped] == [3, 4, 5]
    assert all(isinstance(s, SkippedRow) for s in result.skipped)
    assert "field 'arb' is missing" in result.skipped[0].reason
    assert "field 'fra' is empty" in result.skipped[1].reason
    assert "invalid UTF-8" in result.skipped[2].reason
    assert "skipped 3 bad row(s)" in caplog.text
    line, reason = result.skipped[0]  # plain (line, reason) tuples
    assert line == 3 and reason


def test_skip_bad_with_nothing_left_still_raises(tmp_path):
    path = write(tmp_path / "allbad.tsv", f"eng\tarb\n{EN1}\t\n")
    with pytest.raises(CorpusError, match=r"no usable rows \(1 bad row"):
        load_parallel(path, skip_bad=True)


# ---------------------------------------------------------------- shipped corpus


def test_shipped_corpus_dir_is_inside_the_package():
    import ppolab.data

    assert shipped_corpus_dir().parent.resolve() == __import__("pathlib").Path(ppolab.data.__file__).parent.resolve()


def test_load_shipped_corpus_rejects_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        load_shipped_corpus("dev")


@pytest.mark.skipif(
    not all((shipped_corpus_dir() / f"{s}.tsv").is_file() for s in ("train", "valid", "test")),
    reason="shipped corpus not present yet",
)
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_load_shipped_corpus(split):
    result = load_shipped_corpus(split)
    assert result.skipped == [] and len(result) > 0
    assert {ex.direction for ex in result} == {"eng->arb", "fra->arb"}
    assert all(ex.tgt_lang == "arb" and ex.source and ex.target for ex in result)
    # Every 3-way row yields both directions, with the same id.
    by_direction = {d: [ex.id for ex in result if ex.direction == d] for d in ("eng->arb", "fra->arb")}
    assert by_direction["eng->arb"] == by_direction["fra->arb"]
    english_only = load_shipped_corpus(split, src="eng")
    assert len(english_only) == len(result) // 2


# -------------------------------------------------------------------- templates


class FakeChatTokenizer:
    """Just enough of a tokenizer for build_prompt: a chat template and its renderer."""

    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        body = "".join(f"<|{m['role']}|>{m['content']}" for m in messages)
        return body + ("<|assistant|>" if add_generation_prompt else "")


class FakePlainTokenizer:
    chat_template = None


def test_plain_templates():
    assert build_prompt(EN1, "eng", "arb") == f"Translate English to Arabic:\n{EN1}\nArabic:"
    assert build_prompt(f"  {FR1}\n", "fra", "arb") == f"Translate French to Arabic:\n{FR1}\nArabic:"
    assert build_prompt(EN1, "eng", "arb", tokenizer=FakePlainTokenizer()) == build_prompt(EN1, "eng", "arb")
    assert set(PROMPT_TEMPLATES) == {("eng", "arb"), ("fra", "arb")}
    assert {k: LANG_NAMES[k] for k in ("eng", "fra", "arb")} == {"eng": "English", "fra": "French", "arb": "Arabic"}


def test_template_keeps_braces_in_source():
    assert "{source} {0}" in build_prompt("{source} {0}", "eng", "arb")


def test_chat_template_used_when_present():
    tok = FakeChatTokenizer()
    prompt = build_prompt(FR1, "fra", "arb", tokenizer=tok)
    assert prompt == f"<|user|>Translate French to Arabic:\n{FR1}<|assistant|>"
    [(messages, tokenize, add_generation_prompt)] = tok.calls
    assert messages == [{"role": "user", "content": f"Translate French to Arabic:\n{FR1}"}]
    assert tokenize is False and add_generation_prompt is True


def test_chat_template_with_real_tokenizer_class():
    # A real transformers tokenizer with a chat template, built offline from a tiny vocab.
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    prompt = build_prompt(EN1, "eng", "arb", tokenizer=tok)
    assert prompt == f"[user] Translate English to Arabic:\n{EN1}\n[assistant] "


def test_build_prompt_errors():
    with pytest.raises(ValueError, match="unknown language code 'xyz'"):
        build_prompt(EN1, "xyz", "eng")
    with pytest.raises(ValueError, match="two languages"):
        build_prompt(EN1, "eng", "eng")
    with pytest.raises(ValueError, match="non-empty"):
        build_prompt("  ", "eng", "arb")


# -------------------------------------------------------------------- duplicate ids
def test_a_duplicate_id_and_direction_names_both_lines(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\teng\tfra\tarb\nx1\tHi.\tSalut.\tمرحبا.\nx2\tYes.\tOui.\tنعم.\nx1\tNo.\tNon.\tلا.\n",
                    encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.tsv:4: duplicate id 'x1' for eng->arb: line 2 has it too") as e:
        load_parallel(path)
    assert e.value.line == 4 and e.value.field == "id"
    result = load_parallel(path, skip_bad=True)
    assert [ex.id for ex in result] == ["x1", "x1", "x2", "x2"] and [r.line for r in result.skipped] == [4]


def test_one_id_in_two_directions_is_no_duplicate(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": 7, "eng": "Hi.", "fra": "Salut.", "arb": "مرحبا."}\n', encoding="utf-8")
    assert sorted(ex.direction for ex in load_parallel(path)) == ["eng->arb", "fra->arb"]
