"""GGUF -> Hugging Face conversion (ppolab.models.pretrained), on a tiny Gemma 3 GGUF the test writes.

No download and no real Gemma: `tests/_tiny_gguf.py` builds a seeded 6-layer Gemma 3 text model and
writes it with the `gguf` package; the converted folder must give the same weights and logits.
"""
import json
import sys
import types

import pytest
import torch

from ppolab.models import pretrained
from ppolab.models.pretrained import MARKER, GGUFSource, convert_gguf, pretrained_path, sha256_file
from tests import _tiny_gguf as tiny

TEXTS = ["the cat sat", "hello world!", "hello,world", "the world sat. the cat?"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(the directly built model, the path of its GGUF file)."""
    pytest.importorskip("gguf")
    model = tiny.tiny_gemma3(seed=0)
    return model, tiny.write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    _, gguf_file = tiny_gguf
    out = tmp_path_factory.mktemp("hf") / "tiny-gemma3"
    return convert_gguf(gguf_file, out, expected_sha256=sha256_file(gguf_file), provenance={"name": "tiny"})


def test_converted_model_equals_the_model_built_directly(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM

    direct, _ = tiny_gguf
    loaded = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    assert type(loaded).__name__ == "Gemma3ForCausalLM"
    assert getattr(loaded.config, "quantization_config", None) is None  # a plain fp32 folder, not a GGUF load
    assert loaded.config.layer_types == direct.config.layer_types
    assert loaded.config.rope_parameters == direct.config.rope_parameters
    assert loaded.config.sliding_window == direct.config.sliding_window
    expected, got = direct.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:  # norms are stored as w + 1 and read back as w - 1: exact for our weights
        assert torch.equal(expected[name], got[name]), name
    gen = torch.Generator().manual_seed(1)
    # Longer than the sliding window (8), so local and global attention layers both matter.
    for length in (1, 5, 20):
        ids = torch.randint(0, direct.config.vocab_size, (2, length), generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, direct(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_converted_tokenizer_round_trips_and_keeps_the_special_ids(converted):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (
        tiny.BOS_ID, tiny.EOS_ID, tiny.PAD_ID, tiny.UNK_ID)
    config = AutoConfig.from_pretrained(converted)
    assert len(tok) == config.vocab_size == len(tiny.vocabulary())  # no added token past the embedding
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tiny.BOS_ID and tiny.UNK_ID not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    # merges rebuilt from the vocabulary: whole words come out as one piece
    assert tok.convert_ids_to_tokens(tok(" world", add_special_tokens=False)["input_ids"]) == ["▁world"]
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (tiny.BOS_ID, tiny.EOS_ID, tiny.PAD_ID)


def test_marker_records_the_sha_and_provenance(tiny_gguf, converted):
    _, gguf_file = tiny_gguf
    meta = json.loads((converted / MARKER).read_text(encoding="utf-8"))
    assert meta["sha256"] == sha256_file(gguf_file)
    assert meta["source_file"] == "tiny.gguf" and meta["size"] == gguf_file.stat().st_size
    assert meta["name"] == "tiny"


def test_wrong_sha_is_refused_and_nothing_is_written(tiny_gguf, tmp_path):
    _, gguf_file = tiny_gguf
    out = tmp_path / "never"
    with pytest.raises(RuntimeError, match="tiny.gguf.*does not match"):
        convert_gguf(gguf_file, out, expected_sha256="0" * 64)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown pretrained model 'gemma-99b'.*gemma3-270m"):
        pretrained_path("gemma-99b")


def test_missing_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PPOLAB_CACHE", str(tmp_path))
    fake = GGUFSource(package="ppolab_no_such_gguf_package", version="1.0.0", sha256="0" * 64, size=1,
                      license="-", base_model="-")
    monkeypatch.setitem(pretrained.KNOWN, "fake-model", fake)
    needs_extra = r"'fake-model'.*ppolab-no-such-gguf-package==1\.0\.0.*uv sync --extra gemma"
    with pytest.raises(RuntimeError, match=needs_extra):
        pretrained_path("fake-model")
    assert list(tmp_path.iterdir()) == []


def _no_conversion(*args, **kwargs):
    raise AssertionError("converted again")


def test_prepared_folder_is_returned_without_converting(monkeypatch, tmp_path):
    monkeypatch.setenv("PPOLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrained, "_assembled_gguf", _no_conversion)
    monkeypatch.setattr(pretrained, "convert_gguf", _no_conversion)
    folder = tmp_path / "gemma3-270m"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"sha256": pretrained.KNOWN["gemma3-270m"].sha256}), encoding="utf-8")
    assert pretrained_path("gemma3-270m") == folder
    assert pretrained.resolve_model_path("gemma3-270m") == str(folder)
    assert pretrained.resolve_model_path("some/local/folder") == "some/local/folder"
    # a folder prepared from another file is not trusted: it is prepared again
    (folder / MARKER).write_text(json.dumps({"sha256": "f" * 64}), encoding="utf-8")
    with pytest.raises(AssertionError, match="converted again"):
        pretrained_path("gemma3-270m")


def test_pretrained_path_prepares_a_packaged_file_once(tiny_gguf, monkeypatch, tmp_path):
    """The whole path with a stand-in package whose `assemble` writes the tiny GGUF."""
    _, gguf_file = tiny_gguf
    assembled = []

    def assemble(output_path, overwrite):  # like the real package: makes the folder, returns the path
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(gguf_file.read_bytes())
        assembled.append(output_path)
        return output_path

    package = types.ModuleType("ppolab_fake_gguf_package")
    package.assemble = assemble
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setattr("importlib.metadata.version", lambda dist: "2.0.0")
    source = GGUFSource(package=package.__name__, version="2.0.0", sha256=sha256_file(gguf_file),
                        size=gguf_file.stat().st_size, license="test", base_model="tests/_tiny_gguf.py")
    monkeypatch.setitem(pretrained.KNOWN, "tiny-gemma3", source)
    monkeypatch.setenv("PPOLAB_CACHE", str(tmp_path))
    folder = pretrained_path("tiny-gemma3")
    assert folder == tmp_path / "tiny-gemma3"
    meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    assert meta["sha256"] == source.sha256 and meta["package"] == "ppolab-fake-gguf-package==2.0.0"
    assert (folder / "config.json").exists() and assembled == [tmp_path / "gguf" / "tiny-gemma3.gguf"]
    monkeypatch.setattr(pretrained, "convert_gguf", _no_conversion)
    assert pretrained_path("tiny-gemma3") == folder
