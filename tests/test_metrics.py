"""Tests for ppolab.metrics: sacrebleu wrappers, the COMET subprocess client,
embedding similarity and the combined metric. No model or data is downloaded:
COMET is replaced by stand-in scorer processes, encoders are tiny random models."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import BLEU, CHRF

from ppolab.metrics import (
    DEFAULT_WEIGHTS,
    CombinedMetric,
    CometScorer,
    CometUnavailable,
    EmbeddingSimilarity,
    bleu,
    chrf,
    chrf_pp,
    sentence_bleu,
    sentence_chrf,
    sentence_chrf_pp,
)
from ppolab.metrics.comet import DEFAULT_ENV_DIR

AR_REF = ["ذهب الولد إلى المدرسة صباحا.", "القطة تنام على الأريكة.", "أين محطة القطار؟"]
AR_HYP = ["ذهب الولد إلى المدرسة في الصباح.", "القط نائم على الكنبة.", "أين محطة القطار؟"]
SOURCES = ["The boy went to school in the morning.", "Le chat dort sur le canapé.", "Where is the train station?"]


# ===================================================================== sacre


def test_corpus_scores_match_sacrebleu():
    assert chrf(AR_HYP, AR_REF) == pytest.approx(CHRF().corpus_score(AR_HYP, [AR_REF]).score)
    assert chrf_pp(AR_HYP, AR_REF) == pytest.approx(CHRF(word_order=2).corpus_score(AR_HYP, [AR_REF]).score)
    assert bleu(AR_HYP, AR_REF) == pytest.approx(BLEU().corpus_score(AR_HYP, [AR_REF]).score)
    assert bleu(AR_HYP, AR_REF, tokenize="intl") == pytest.approx(
        BLEU(tokenize="intl").corpus_score(AR_HYP, [AR_REF]).score
    )


def test_sentence_scores_match_sacrebleu_and_are_batched():
    c = sentence_chrf(AR_HYP, AR_REF)
    assert c == pytest.approx([CHRF().sentence_score(h, [r]).score for h, r in zip(AR_HYP, AR_REF)])
    assert sentence_chrf_pp(AR_HYP, AR_REF) == pytest.approx(
        [CHRF(word_order=2).sentence_score(h, [r]).score for h, r in zip(AR_HYP, AR_REF)]
    )
    b = sentence_bleu(AR_HYP, AR_REF)
    assert len(b) == len(c) == 3
    assert c[2] == pytest.approx(100.0) and b[2] == pytest.approx(100.0)  # identical pair
    assert all(0.0 <= x <= 100.0 + 1e-9 for x in c + b)  # sacrebleu can overshoot 100 by an ulp


def test_sentence_bleu_uses_effective_order():
    # Without effective order a 2-token identical sentence would score 0.
    assert sentence_bleu(["مرحبا بك"], ["مرحبا بك"]) == [pytest.approx(100.0)]


def test_inputs_are_stripped():
    padded = ["  " + h + "\n" for h in AR_HYP]
    assert chrf(padded, AR_REF) == pytest.approx(chrf(AR_HYP, AR_REF))
    assert bleu(padded, AR_REF) == pytest.approx(bleu(AR_HYP, AR_REF))
    assert sentence_chrf(padded, [" " + r for r in AR_REF]) == pytest.approx(sentence_chrf(AR_HYP, AR_REF))


@pytest.mark.parametrize("fn", [chrf, chrf_pp, bleu, sentence_chrf, sentence_chrf_pp, sentence_bleu])
def test_length_mismatch_and_bad_types_raise(fn):
    with pytest.raises(ValueError, match="differ in length"):
        fn(AR_HYP, AR_REF[:2])
    with pytest.raises(TypeError):
        fn("a string", "another")
    with pytest.raises(TypeError, match=r"hyps\[1\]"):
        fn(["a", None], ["a", "b"])


def test_empty_inputs():
    assert sentence_chrf([], []) == [] and sentence_bleu([], []) == []
    with pytest.raises(ValueError, match="empty"):
        chrf([], [])


# ===================================================================== COMET

# A stand-in for score_comet.py speaking exactly its protocol: JSON lines on
# stdin ({"checkpoint", "batch_size", "gpus", "data": [{"src","mt","ref"}]}),
# one JSON line back per request ({"scores", "system_score"} or {"error"} and
# exit 1), serving until EOF. Its "score" is a length ratio, so tests can
# predict it. Env vars let tests make it misbehave.
STAND_IN = textwrap.dedent(
    '''
    import json, os, sys, time
    from pathlib import Path

    mode = os.environ.get("STAND_IN_MODE", "ok")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if mode == "crash":
            print("boom: the scorer fell over", file=sys.stderr)
            sys.exit(3)
        if mode == "sleep":
            time.sleep(30)
        ckpt = Path(req["checkpoint"])
        if not ckpt.is_file():
            print(json.dumps({"error": f"FileNotFoundError: {ckpt}"}))
            sys.exit(1)
        scores = [len(d["mt"]) / max(len(d["ref"]), 1) for d in req["data"]]
        if mode == "short":
            scores = scores[:-1]
        if mode == "garbage":
            print("this is not json", flush=True)
            continue
        print("stand-in log line", file=sys.stderr)
        out = {"scores": scores, "system_score": sum(scores) / len(scores) if scores else None}
        print(json.dumps(out), flush=True)
    '''
)


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    """A fake COMET model folder in the Hub layout (hparams.yaml + checkpoints/model.ckpt)."""
    root = tmp_path / "wmt22-comet-da"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "model.ckpt").write_bytes(b"not a real checkpoint")
    (root / "hparams.yaml").write_text("class_identifier: regression_metric\n")
    return root


@pytest.fixture
def stand_in(tmp_path: Path) -> list[str]:
    script = tmp_path / "stand_in_scorer.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script)]


def _length_ratios(hyps, refs):
    return [len(h.strip()) / max(len(r.strip()), 1) for h, r in zip(hyps, refs)]


@pytest.mark.parametrize("persistent", [False, True])
def test_comet_scorer_with_stand_in(checkpoint_dir, stand_in, persistent):
    with CometScorer(checkpoint_dir, command=stand_in, persistent=persistent) as scorer:
        got = scorer.score(SOURCES, AR_HYP, AR_REF)
        assert got == pytest.approx(_length_ratios(AR_HYP, AR_REF))
        if persistent:
            pid = scorer._proc.pid
            assert scorer.score(SOURCES[:1], AR_HYP[:1], AR_REF[:1]) == pytest.approx(got[:1])
            assert scorer._proc.pid == pid, "persistent scorer restarted between calls"
        assert scorer.score([], [], []) == []
    assert scorer._proc is None


def test_comet_checkpoint_file_or_folder(checkpoint_dir, stand_in):
    a = CometScorer(checkpoint_dir, command=stand_in)
    b = CometScorer(checkpoint_dir / "checkpoints" / "model.ckpt", command=stand_in)
    assert a.checkpoint == b.checkpoint


def test_comet_missing_checkpoint(tmp_path, stand_in):
    with pytest.raises(CometUnavailable, match="COMET checkpoint not found at .*nothing is downloaded"):
        CometScorer(tmp_path / "no-such-model", command=stand_in)


def test_comet_missing_environment(tmp_path, checkpoint_dir):
    with pytest.raises(CometUnavailable, match="COMET environment not found"):
        CometScorer(checkpoint_dir, env_dir=tmp_path / "no-env")
    with pytest.raises(CometUnavailable, match="python executable for COMET not found"):
        CometScorer(checkpoint_dir, python=str(tmp_path / "no-python"))


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv not on PATH")
def test_comet_unsynced_environment(tmp_path, checkpoint_dir):
    env = tmp_path / "comet_env"
    env.mkdir()
    shutil.copy(DEFAULT_ENV_DIR / "score_comet.py", env)
    with pytest.raises(CometUnavailable, match="not set up .*uv sync"):
        CometScorer(checkpoint_dir, env_dir=env)


def test_default_command_uses_uv_without_sync(tmp_path, checkpoint_dir, monkeypatch):
    env = tmp_path / "comet_env"
    (env / ".venv").mkdir(parents=True)
    shutil.copy(DEFAULT_ENV_DIR / "score_comet.py", env)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    cmd = CometScorer(checkpoint_dir, env_dir=env).command
    assert cmd == ["/usr/bin/uv", "run", "--no-sync", "--project", str(env.resolve()), "python",
                   str(env.resolve() / "score_comet.py")]


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize(
    "mode, message",
    [
        ("crash", r"exit status 3(.|\n)*boom: the scorer fell over"),
        ("short", "got 2 scores for 3 segments"),
        ("garbage", "unreadable answer"),
    ],
)
def test_comet_subprocess_failures(checkpoint_dir, stand_in, monkeypatch, persistent, mode, message):
    monkeypatch.setenv("STAND_IN_MODE", mode)
    scorer = CometScorer(checkpoint_dir, command=stand_in, persistent=persistent)
    with pytest.raises(CometUnavailable, match=message):
        scorer.score(SOURCES, AR_HYP, AR_REF)
    assert scorer._proc is None  # a failed persistent process is not reused
    scorer.close()


def test_comet_protocol_error_line(tmp_path, stand_in):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_text("x")
    scorer = CometScorer(ckpt, command=stand_in)
    ckpt.unlink()  # vanishes after construction: the scorer process reports it
    with pytest.raises(CometUnavailable, match="FileNotFoundError"):
        scorer.score(SOURCES, AR_HYP, AR_REF)


def test_comet_timeout(checkpoint_dir, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "sleep")
    scorer = CometScorer(checkpoint_dir, command=stand_in, timeout=1)
    with pytest.raises(CometUnavailable, match="no answer within"):
        scorer.score(SOURCES, AR_HYP, AR_REF)


def test_comet_argument_checks(checkpoint_dir, stand_in):
    scorer = CometScorer(checkpoint_dir, command=stand_in)
    with pytest.raises(ValueError, match="differ in length"):
        scorer.score(SOURCES, AR_HYP[:2], AR_REF)
    with pytest.raises(ValueError):
        CometScorer(checkpoint_dir, command=stand_in, batch_size=0)
    with pytest.raises(ValueError):
        CometScorer(checkpoint_dir, command=stand_in, gpus=2)


# The real comet_env/score_comet.py, run with a fake `comet` package on
# PYTHONPATH: checks the script's own plumbing (request parsing, checkpoint
# resolution, stdout hygiene, error lines) without unbabel-comet installed.
FAKE_COMET = textwrap.dedent(
    '''
    import os, sys
    from types import SimpleNamespace

    def load_from_checkpoint(path, local_files_only=False):
        assert local_files_only, "score_comet.py must never let COMET download"
        print("Lightning banner that must not reach the protocol stream")
        os.write(1, b"raw fd-1 noise from native code\\n")
        return Model(path)

    class Model:
        def __init__(self, path):
            self.path = path
        def predict(self, samples, batch_size=16, gpus=1, progress_bar=True):
            assert gpus in (0, 1) and batch_size == 4 and progress_bar is False
            scores = [len(s["mt"]) / max(len(s["ref"]), 1) for s in samples]
            return SimpleNamespace(scores=scores, system_score=sum(scores) / len(scores))
    '''
)


@pytest.fixture
def fake_comet_env(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_site" / "comet"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_COMET)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake_site"))


@pytest.mark.parametrize("persistent", [False, True])
def test_real_score_comet_script_with_fake_comet(checkpoint_dir, fake_comet_env, persistent):
    with CometScorer(checkpoint_dir, python=sys.executable, batch_size=4, gpus=0, persistent=persistent) as scorer:
        assert scorer.score(SOURCES, AR_HYP, AR_REF) == pytest.approx(_length_ratios(AR_HYP, AR_REF))
        assert scorer.score(SOURCES[:2], AR_HYP[:2], AR_REF[:2]) == pytest.approx(_length_ratios(AR_HYP, AR_REF)[:2])


def test_real_script_reports_missing_hparams(checkpoint_dir, fake_comet_env):
    (checkpoint_dir / "hparams.yaml").unlink()
    scorer = CometScorer(checkpoint_dir, python=sys.executable, batch_size=4, gpus=0)
    with pytest.raises(CometUnavailable, match="hparams.yaml"):
        scorer.score(SOURCES, AR_HYP, AR_REF)


def test_stand_in_speaks_the_same_protocol_as_score_comet(checkpoint_dir, fake_comet_env, stand_in):
    """Same request bytes to both; same response shape, same exit status, stdout is protocol only."""
    request = {
        "checkpoint": str(checkpoint_dir / "checkpoints" / "model.ckpt"),  # what CometScorer sends
        "batch_size": 4,
        "gpus": 0,
        "data": [{"src": s, "mt": h, "ref": r} for s, h, r in zip(SOURCES, AR_HYP, AR_REF)],
    }
    line = json.dumps(request, ensure_ascii=False) + "\n"
    real = [sys.executable, str(DEFAULT_ENV_DIR / "score_comet.py")]
    # Two requests on one stream: both must serve until EOF.
    answers = {}
    for name, cmd in (("real", real), ("stand_in", stand_in)):
        proc = subprocess.run(cmd, input=(line * 2).encode(), capture_output=True, env=os.environ, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        lines = proc.stdout.decode().splitlines()
        assert len(lines) == 2, lines
        answers[name] = [json.loads(x) for x in lines]
    for a, b in zip(answers["real"], answers["stand_in"]):
        assert set(a) == set(b) == {"scores", "system_score"}
        assert a["scores"] == pytest.approx(b["scores"])
        assert a["system_score"] == pytest.approx(b["system_score"])


def test_score_comet_script_help_runs_without_comet():
    proc = subprocess.run([sys.executable, str(DEFAULT_ENV_DIR / "score_comet.py"), "--help"],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0 and b"--checkpoint" in proc.stdout


# ================================================================ embeddings

# ByT5's tokenizer needs no files: ids are bytes + 3 specials (+125 extra ids).
BYTE_VOCAB = 384


@pytest.fixture(scope="module")
def byt5():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=BYTE_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=256)
    return BertModel(cfg).eval()


def _tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=BYTE_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    return LlamaModel(cfg).eval()


@pytest.fixture(scope="module", params=["bert", "llama"])
def sim(request, byt5):
    model = _tiny_bert() if request.param == "bert" else _tiny_llama()
    return EmbeddingSimilarity(model, byt5, batch_size=4, max_length=128)


def _reference_f1(sim: EmbeddingSimilarity, hyp: str, ref: str, layer: int = -1) -> float:
    """One pair at a time, no padding at all, plain loops: the definition written out."""

    def embed(text):
        enc = sim.tokenizer([text.strip()], return_special_tokens_mask=True, truncation=True,
                            max_length=sim.max_length)
        ids = torch.tensor(enc["input_ids"])
        with torch.no_grad():
            hs = sim.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
        keep = [i for i, s in enumerate(enc["special_tokens_mask"][0]) if not s]
        return [torch.nn.functional.normalize(hs[i].float(), dim=0) for i in keep]

    h, r = embed(hyp), embed(ref)
    if not h or not r:
        return float(not h and not r)
    p = sum(max(float(a @ b) for b in r) for a in h) / len(h)
    rc = sum(max(float(a @ b) for a in h) for b in r) / len(r)
    return 2 * p * rc / (p + rc) if p > 0 and rc > 0 else min(p, rc)


MIXED = ["مرحبا بالعالم", "Bonjour le monde", "", "a", "القطة تنام على الأريكة الكبيرة في غرفة الجلوس", "x y z"]


def test_identical_strings_score_one(sim):
    texts = [t for t in AR_REF + SOURCES + MIXED if t.strip()]
    assert sim.score(texts, texts) == pytest.approx([1.0] * len(texts), abs=1e-5)


def test_matches_per_pair_reference(sim):
    hyps = AR_HYP + MIXED
    refs = AR_REF + list(reversed(MIXED))
    got = sim.score(hyps, refs)
    want = [_reference_f1(sim, h, r) for h, r in zip(hyps, refs)]
    assert got == pytest.approx(want, abs=1e-5)


def test_batch_invariance(sim):
    """A pair's score must not depend on its batch-mates (i.e. on padding)."""
    pair = ("ذهب الولد", "ذهب الطفل إلى البيت")
    alone = sim.score([pair[0]], [pair[1]])[0]
    long_mates = [("و" * 100, "ب" * 90), ("Bonjour", "Hello there, friend"), ("", "non-empty")]
    hyps = [m[0] for m in long_mates] + [pair[0]] + [m[0] for m in long_mates]
    refs = [m[1] for m in long_mates] + [pair[1]] + [m[1] for m in long_mates]
    in_batch = sim.score(hyps, refs)[len(long_mates)]
    assert in_batch == pytest.approx(alone, abs=1e-5)


@settings(max_examples=20)  # each example is a model forward pass; keep the suite quick
@given(st.text(min_size=0, max_size=30), st.text(min_size=0, max_size=30))
def test_bounds_and_symmetry(sim, a, b):
    ab, ba, aa = sim.score([a, b, a], [b, a, a])
    assert -1.0 <= ab <= 1.0
    assert ab == pytest.approx(ba, abs=1e-5)  # swapping hyp and ref swaps P and R
    assert aa == pytest.approx(1.0, abs=1e-5)


def test_empty_strings(sim):
    assert sim.score(["", "", "abc"], ["", "abc", ""]) == [1.0, 0.0, 0.0]
    assert sim.score([], []) == []


def test_embedding_argument_checks(byt5, tmp_path):
    model = _tiny_bert()
    with pytest.raises(ValueError, match="tokenizer is required"):
        EmbeddingSimilarity(model)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        EmbeddingSimilarity(tmp_path / "missing")
    s = EmbeddingSimilarity(model, byt5)
    with pytest.raises(ValueError, match="differ in length"):
        s.score(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="layer=7 out of range"):
        EmbeddingSimilarity(model, byt5, layer=7).score(["a"], ["b"])


def test_embedding_from_local_folder_and_layer(byt5, tmp_path):
    model = _tiny_bert()
    model.save_pretrained(tmp_path / "enc")
    byt5.save_pretrained(tmp_path / "enc")
    from_path = EmbeddingSimilarity(tmp_path / "enc", layer=1)
    from_obj = EmbeddingSimilarity(model, byt5, layer=1)
    assert from_path.score(AR_HYP, AR_REF) == pytest.approx(from_obj.score(AR_HYP, AR_REF), abs=1e-5)
    assert from_obj.score(AR_HYP, AR_REF) == pytest.approx(
        [_reference_f1(from_obj, h, r, layer=1) for h, r in zip(AR_HYP, AR_REF)], abs=1e-5
    )


# ================================================================== combined


class FakeBertScore:
    def score(self, hyps, refs):
        return [0.5 + 0.1 * i for i in range(len(hyps))]


def test_only_chrf_gets_all_weight():
    m = CombinedMetric()
    assert m.available == {"chrf": 1.0}
    assert m.sentence_scores(SOURCES, AR_HYP, AR_REF) == pytest.approx([c / 100 for c in sentence_chrf(AR_HYP, AR_REF)])


def test_chrf_and_bertscore_renormalise():
    m = CombinedMetric(bertscore=FakeBertScore())
    assert m.available == pytest.approx({"bertscore": 0.6, "chrf": 0.4})
    c = sentence_chrf(AR_HYP, AR_REF)
    b = FakeBertScore().score(AR_HYP, AR_REF)
    assert m.sentence_scores(SOURCES, AR_HYP, AR_REF) == pytest.approx(
        [0.6 * bi + 0.4 * ci / 100 for bi, ci in zip(b, c)]
    )


def test_all_three_with_stand_in_comet(checkpoint_dir, stand_in):
    comet = CometScorer(checkpoint_dir, command=stand_in)
    m = CombinedMetric(comet=comet, bertscore=FakeBertScore())
    assert m.available == pytest.approx(DEFAULT_WEIGHTS)
    assert list(m.available) == ["comet", "bertscore", "chrf"]
    k = _length_ratios(AR_HYP, AR_REF)
    b = FakeBertScore().score(AR_HYP, AR_REF)
    c = sentence_chrf(AR_HYP, AR_REF)
    want = [0.5 * ki + 0.3 * bi + 0.2 * ci / 100 for ki, bi, ci in zip(k, b, c)]
    assert m.sentence_scores(SOURCES, AR_HYP, AR_REF) == pytest.approx(want)

    report = m.corpus_scores(SOURCES, AR_HYP, AR_REF)
    assert set(report) == {"comet", "bertscore", "chrf", "chrf++", "bleu", "combined"}
    assert report["comet"] == pytest.approx(sum(k) / 3)
    assert report["chrf"] == pytest.approx(chrf(AR_HYP, AR_REF))
    assert report["combined"] == pytest.approx(
        0.5 * report["comet"] + 0.3 * report["bertscore"] + 0.2 * report["chrf"] / 100
    )


def test_comet_and_chrf_only(checkpoint_dir, stand_in):
    m = CombinedMetric(comet=CometScorer(checkpoint_dir, command=stand_in))
    assert m.available == pytest.approx({"comet": 5 / 7, "chrf": 2 / 7})
    report = m.corpus_scores(SOURCES, AR_HYP, AR_REF)
    assert "bertscore" not in report
    assert report["combined"] == pytest.approx(5 / 7 * report["comet"] + 2 / 7 * report["chrf"] / 100)


def test_with_real_embedding_similarity(byt5):
    m = CombinedMetric(bertscore=EmbeddingSimilarity(_tiny_bert(), byt5))
    same = m.sentence_scores(AR_REF, AR_REF, AR_REF)
    assert same == pytest.approx([1.0] * 3, abs=1e-5)  # every metric is at its maximum


def test_weights_validation():
    assert CombinedMetric(weights={"chrf": 3.0}, bertscore=FakeBertScore()).available == {"chrf": 1.0}
    with pytest.raises(ValueError, match="unknown metric"):
        CombinedMetric(weights={"bleurt": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        CombinedMetric(weights={"chrf": -1.0})
    with pytest.raises(ValueError, match=">= 0"):
        CombinedMetric(weights={"chrf": math.nan})
    with pytest.raises(ValueError, match="no metric"):
        CombinedMetric(weights={"comet": 1.0, "chrf": 0.0})
    with pytest.raises(ValueError, match="differ in length"):
        CombinedMetric().sentence_scores(SOURCES[:1], AR_HYP, AR_REF)
    with pytest.raises(ValueError, match="empty"):
        CombinedMetric().corpus_scores([], [], [])
