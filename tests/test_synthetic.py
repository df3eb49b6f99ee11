"""ppolab.synthetic: config validation, pair selection, generation invariants, resume."""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from ppolab.config import ConfigError, ModelConfig
from ppolab.data import build_prompt, load_shipped_corpus
from ppolab.metrics import CombinedMetric
from ppolab.models import build_tiny_causal_lm, build_tokenizer
from ppolab.synthetic import (
    CANDIDATES_FILE,
    DEFAULT_STRATEGIES,
    PAIR_FIELDS,
    PREFERENCES_FILE,
    STATS_FILE,
    PreferenceFileError,
    SamplingStrategy,
    SynthConfig,
    generate_synthetic_preferences,
    load_preferences,
    normalize_whitespace,
    select_pairs,
)

# A random tiny model translates badly and evenly (chrF ~0.02), so the gap threshold is low
# enough here for pairs to exist; the invariants checked do not depend on its value.
MIN_GAP = 0.01
N_SOURCES = 6  # two batches of 3: enough for a kill between batches


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # A model this small gains nothing from a second thread, and on a busy 2-core machine two
    # threads wait on each other at every tiny matmul (measured: 14x slower generation).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _setup():
    examples = list(load_shipped_corpus("train"))[:N_SOURCES]
    texts = [e.source for e in examples] + [e.target for e in examples]
    tok = build_tokenizer(texts, vocab_size=400)
    cfg = ModelConfig(arch="llama", n_layers=2, hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=64)
    return build_tiny_causal_lm(cfg, tok), tok, examples


def _config(**kw) -> SynthConfig:
    base = dict(min_gap=MIN_GAP, max_new_tokens=6, batch_size=3, seed=0)
    base.update(kw)
    return SynthConfig(**base)


def _run(out_dir, config=None, metric=None, examples=None, **kw):
    model, tok, exs = _setup()
    return generate_synthetic_preferences(
        model, tok, exs if examples is None else examples, metric or CombinedMetric(),
        config or _config(), out_dir, progress=False, **kw,
    )


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _check_pairs(out_dir, config: SynthConfig) -> list[dict]:
    """The invariants every output must satisfy, whatever was sampled."""
    pairs = load_preferences(out_dir / PREFERENCES_FILE)
    keys = [(p["source_id"], p["direction"], p["chosen"], p["rejected"]) for p in pairs]
    assert len(keys) == len(set(keys)), "duplicate pair"
    per_source: dict = {}
    for p in pairs:
        assert list(p) == list(PAIR_FIELDS)
        assert p["chosen_score"] >= p["rejected_score"] + config.min_gap
        assert p["chosen"] != p["rejected"]
        assert p["chosen"] == normalize_whitespace(p["chosen"]) and p["chosen"]
        assert p["rejected"] == normalize_whitespace(p["rejected"]) and p["rejected"]
        per_source.setdefault((p["source_id"], p["direction"]), []).append(p)
    cap = 1 if config.pair_strategy == "best_vs_worst" else config.max_pairs_per_source
    for group in per_source.values():
        assert len(group) <= cap
        gaps = [p["chosen_score"] - p["rejected_score"] for p in group]
        assert gaps == sorted(gaps, reverse=True)
    # Candidates: deduplicated after normalisation, no empties, every source done once.
    rows = [json.loads(line) for line in _lines(out_dir / CANDIDATES_FILE)]
    _, _, exs = _setup()
    assert sorted((r["source_id"], r["direction"]) for r in rows) == sorted((e.id, e.direction) for e in exs)
    for r in rows:
        texts = [c["text"] for c in r["candidates"]]
        assert len(texts) == len(set(texts)) and all(t and t == normalize_whitespace(t) for t in texts)
        assert r["n_generated"] == config.candidates_per_source
        assert sum(len(c["strategies"]) for c in r["candidates"]) + len(r["empty_strategies"]) == r["n_generated"]
        assert r["n_pairs"] == len(per_source.get((r["source_id"], r["direction"]), []))
    return pairs


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("field, value", [
    ("candidates_per_source", 2), ("candidates_per_source", 9), ("candidates_per_source", 4.0),
    ("strategies", ()), ("min_gap", 0.0), ("min_gap", -0.1), ("min_gap", float("nan")),
    ("pair_strategy", "random"), ("max_pairs_per_source", 0), ("max_new_tokens", 0),
    ("batch_size", 0), ("seed", -1), ("seed", True),
])
def test_synth_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=rf"SynthConfig\.{field}"):
        SynthConfig(**{field: value})


def test_synth_config_strategies():
    cfg = SynthConfig()
    assert cfg.strategies == DEFAULT_STRATEGIES and len(DEFAULT_STRATEGIES) == 6
    assert len({s.name for s in DEFAULT_STRATEGIES}) == 6
    assert [cfg.strategy_for(i).name for i in (0, 5, 6)] == ["t0.7", "p0.9_t1.2", "t0.7"]
    from_dicts = SynthConfig(strategies=[{"name": "a", "temperature": 0.5}, {"name": "b", "temperature": 1.0, "top_k": 5}])
    assert from_dicts.strategies == (SamplingStrategy("a", 0.5), SamplingStrategy("b", 1.0, top_k=5))
    json.dumps(from_dicts.to_dict())
    with pytest.raises(ConfigError, match=r"SynthConfig\.strategies: names must be unique"):
        SynthConfig(strategies=[SamplingStrategy("a", 1.0), SamplingStrategy("a", 0.5)])
    with pytest.raises(ConfigError, match=r"SynthConfig\.strategies\[0\]"):
        SynthConfig(strategies=[{"name": "a", "temperature": 1.0, "bogus": 1}])
    for kw, field in [({"temperature": 0}, "temperature"), ({"top_k": -1}, "top_k"),
                      ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"name": " "}, "name")]:
        args = {"name": "s", "temperature": 1.0, **kw}
        with pytest.raises(ConfigError, match=rf"SamplingStrategy\.{field}"):
            SamplingStrategy(**args)


# ------------------------------------------------------------------------- pair logic


def test_select_pairs():
    scores = [0.50, 0.10, 0.52, 0.30, 0.10]
    assert select_pairs(scores, 0.05, "best_vs_worst", 3) == [(2, 1)]  # ties: first index wins
    assert select_pairs(scores, 0.5, "best_vs_worst", 3) == []
    assert select_pairs([0.4], 0.01, "best_vs_worst", 3) == []
    assert select_pairs(scores, 0.05, "all_above_threshold", 3) == [(2, 1), (2, 4), (0, 1)]
    every = select_pairs(scores, 0.05, "all_above_threshold", 100)
    assert len(every) == 8 and all(scores[c] >= scores[r] + 0.05 for c, r in every)
    assert (0, 2) not in every and (2, 0) not in every  # 0.02 apart: below the gap
    with pytest.raises(ValueError, match="pair_strategy"):
        select_pairs(scores, 0.05, "nope", 1)


def test_normalize_whitespace():
    assert normalize_whitespace("  a \t b\n\nc  ") == "a b c"
    assert normalize_whitespace(" \n ") == ""


# ------------------------------------------------------------------------- generation


def test_best_vs_worst_pairs_and_stats(tmp_path):
    _setup()  # building the model seeds torch; do it before watching the RNG
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    config = _config()
    stats = _run(tmp_path, config)
    assert torch.equal(torch.rand(3), expected_next), "the caller's RNG stream was disturbed"

    pairs = _check_pairs(tmp_path, config)
    assert pairs, "no pair at all: the test would check nothing"
    _, tok, exs = _setup()
    by_key = {(e.id, e.direction): e for e in exs}
    for p in pairs:
        ex = by_key[(p["source_id"], p["direction"])]
        assert p["prompt"] == build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tok)
        assert (p["source"], p["reference"]) == (ex.source, ex.target)
    assert stats == json.loads((tmp_path / STATS_FILE).read_text())
    assert stats["sources"] == N_SOURCES == stats["sources_this_run"]
    assert stats["candidates"] == N_SOURCES * config.candidates_per_source
    assert stats["pairs"] == len(pairs)
    gaps = [p["chosen_score"] - p["rejected_score"] for p in pairs]
    assert math.isclose(stats["mean_gap"], sum(gaps) / len(gaps))
    assert list(stats["per_strategy"]) == [s.name for s in config.strategies]
    assert sum(s["candidates"] + s["empty"] for s in stats["per_strategy"].values()) == stats["candidates"]


def test_all_above_threshold_with_prompt_fn(tmp_path):
    config = _config(pair_strategy="all_above_threshold", max_pairs_per_source=3)
    _run(tmp_path, config, prompt_fn=lambda ex: build_prompt(ex.source, ex.src_lang, ex.tgt_lang) + " ")
    pairs = _check_pairs(tmp_path, config)
    assert pairs and all(p["prompt"].endswith("Arabic: ") for p in pairs)
    counts: dict = {}
    for p in pairs:
        counts[p["source_id"], p["direction"]] = counts.get((p["source_id"], p["direction"]), 0) + 1
    assert max(counts.values()) > 1, "all_above_threshold should give several pairs for some source"


def test_one_generate_call_per_strategy_per_batch(tmp_path, monkeypatch):
    model, _, _ = _setup()
    calls = []
    real = model.generate

    def spy(*args, **kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["generation_config"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    config = _config(candidates_per_source=8, batch_size=4, max_new_tokens=4)
    _run(tmp_path, config)
    assert len(calls) == 6 * 2  # 6 strategies x 2 batches (4 + 2 sources)
    by_strategy = [cfg for _, cfg in calls[:6]]
    # Candidates 6 and 7 wrap around to the first two strategies.
    assert [c.num_return_sequences for c in by_strategy] == [2, 2, 1, 1, 1, 1]
    for c, s in zip(by_strategy, DEFAULT_STRATEGIES):
        assert c.do_sample and (c.temperature, c.top_k, c.top_p) == (s.temperature, s.top_k, s.top_p)
    assert by_strategy[0].top_k == 0  # off, not transformers' default of 50
    assert [n for n, _ in calls] == [4] * 6 + [2] * 6


# ------------------------------------------------------------------------------- resume


def test_rerun_is_idempotent(tmp_path):
    _run(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in (PREFERENCES_FILE, CANDIDATES_FILE)}
    stats = _run(tmp_path, _config(batch_size=5))  # batch_size may change on resume
    assert stats["sources_this_run"] == 0 and stats["sources_already_done"] == N_SOURCES
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


class _KilledAfter:
    """A metric that works for `n` batches, then fails as if the process died."""

    def __init__(self, n):
        self.n, self.inner = n, CombinedMetric()

    def sentence_scores(self, sources, hyps, refs):
        if self.n == 0:
            raise KeyboardInterrupt("simulated kill")
        self.n -= 1
        return self.inner.sentence_scores(sources, hyps, refs)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(full)
    with pytest.raises(KeyboardInterrupt):
        _run(killed, metric=_KilledAfter(1))  # batch 1 of 2 committed
    done = [json.loads(line) for line in _lines(killed / CANDIDATES_FILE)]
    assert len(done) == 3  # the first batch
    # The kill also hit the next batch's append: one whole pair of an uncommitted source, then
    # half a line.
    done_keys = {(r["source_id"], r["direction"]) for r in done}
    uncommitted = [line for line in _lines(full / PREFERENCES_FILE)
                   if (json.loads(line)["source_id"], json.loads(line)["direction"]) not in done_keys]
    assert uncommitted
    with open(killed / PREFERENCES_FILE, "a", encoding="utf-8") as f:
        f.write(uncommitted[0] + "\n" + uncommitted[-1][:25])

    stats = _run(killed)
    assert stats["sources_this_run"] == N_SOURCES - 3
    for name in (PREFERENCES_FILE, CANDIDATES_FILE):
        assert (killed / name).read_bytes() == (full / name).read_bytes()
    _check_pairs(killed, _config())


def test_truncated_last_line_is_repaired(tmp_path):
    _run(tmp_path)
    path = tmp_path / PREFERENCES_FILE
    original = path.read_bytes()
    path.write_bytes(original[:-20])  # cut inside the last pair line
    with pytest.raises(PreferenceFileError, match=rf"{PREFERENCES_FILE}:\d+: not valid JSON.*interrupted"):
        load_preferences(path)
    stats = _run(tmp_path)
    assert stats["sources_this_run"] == 1  # only the source whose pair was cut is redone
    assert path.read_bytes() == original
    _check_pairs(tmp_path, _config())


def test_settings_mismatch_and_orphan_files(tmp_path):
    _run(tmp_path, examples=_setup()[2][:2])
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 -> 1\)"):
        _run(tmp_path, _config(seed=1))
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / PREFERENCES_FILE).write_text("{}\n")
    with pytest.raises(ValueError, match="settings that produced it are unknown"):
        _run(orphan)


def test_bad_inputs(tmp_path):
    _, _, exs = _setup()
    with pytest.raises(ValueError, match="share id"):
        _run(tmp_path / "a", examples=[exs[0], exs[0]])
    with pytest.raises(TypeError, match="sentence_scores"):
        _run(tmp_path / "b", metric=object())

    class Short:
        def sentence_scores(self, sources, hyps, refs):
            return [0.5]

    with pytest.raises(ValueError, match="returned 1 scores"):
        _run(tmp_path / "c", metric=Short(), examples=exs[:2])


# ---------------------------------------------------------------------- load_preferences


def test_load_preferences_names_file_and_line(tmp_path):
    good = {"prompt": "p", "source": "s", "reference": "r", "direction": "eng->arb", "chosen": "a",
            "rejected": "b", "chosen_score": 0.5, "rejected_score": 0.2, "chosen_strategy": "t0.7",
            "rejected_strategy": "t1.6", "source_id": "x1"}
    path = tmp_path / "prefs.jsonl"

    def write(*rows):
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    write(good, "", {**good, "chosen": "c"})
    assert [p["chosen"] for p in load_preferences(path)] == ["a", "c"]
    cases = [
        ((good, "{not json"), ":2: not valid JSON"),
        ((good, {k: v for k, v in good.items() if k != "prompt"}), r":2: missing field\(s\) \['prompt'\]"),
        (({**good, "rejected": "a"},), ":1: chosen and rejected are the same text"),
        (({**good, "chosen_score": 0.1},), ":1: chosen_score 0.1 does not exceed"),
        (({**good, "chosen_score": "high"},), ":1: field 'chosen_score' must be a finite number"),
        ((good, good), ":2: duplicate of the pair on line 1"),
    ]
    for rows, message in cases:
        write(*rows)
        with pytest.raises(PreferenceFileError, match=rf"prefs\.jsonl{message}"):
            load_preferences(path)
    with pytest.raises(FileNotFoundError):
        load_preferences(tmp_path / "missing.jsonl")
