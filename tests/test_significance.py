"""Paired bootstrap (sacrebleu's) between two systems: agrees with a plain loop, symmetric, sane edges."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppolab.metrics import bleu, chrf, paired_bootstrap

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "home", "early", "red", "big"]
SENT = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7).map(" ".join)


@st.composite
def corpora(draw, n_max=12):
    n = draw(st.integers(2, n_max))
    return [draw(st.lists(SENT, min_size=n, max_size=n)) for _ in range(3)]


def plain_loop(baseline, system, refs, score, n_samples):
    """The Moses procedure with a loop per resample and the same indices sacrebleu draws."""
    idxs = np.random.default_rng(12345).choice(len(refs), size=(n_samples, len(refs)), replace=True)
    diffs = []
    for row in idxs:
        pick = lambda xs: [xs[i] for i in row]  # noqa: E731
        diffs.append(abs(score(pick(system), pick(refs)) - score(pick(baseline), pick(refs))))
    diffs = np.array(diffs)
    real = abs(score(system, refs) - score(baseline, refs))
    return (np.sum(diffs - diffs.mean() > real) + 1) / (n_samples + 1)


@settings(max_examples=15)
@given(corpora())
def test_p_value_matches_a_plain_loop_and_scores_match_the_corpus_metrics(c):
    baseline, system, refs = c
    out = paired_bootstrap(baseline, system, refs, n_samples=60)
    for name, score in (("chrf", chrf), ("bleu", bleu)):
        r = out[name]
        assert r["baseline"] == pytest.approx(score(baseline, refs), abs=1e-4)
        assert r["system"] == pytest.approx(score(system, refs), abs=1e-4)
        assert r["delta"] == pytest.approx(r["system"] - r["baseline"])
        if baseline != system:
            # float32 sufficient statistics in sacrebleu vs float64 here: a boundary resample may flip
            assert r["p_value"] == pytest.approx(plain_loop(baseline, system, refs, score, 60), abs=2.5 / 61)
        assert 0 < r["p_value"] <= 1 and r["system_ci"] >= 0 and r["n"] == len(refs)


@settings(max_examples=10)
@given(corpora())
def test_swapping_the_systems_flips_the_delta_and_keeps_the_p_value(c):
    baseline, system, refs = c
    ab, ba = paired_bootstrap(baseline, system, refs, n_samples=50), paired_bootstrap(system, baseline, refs,
                                                                                       n_samples=50)
    for m in ("chrf", "bleu"):
        assert ab[m]["delta"] == pytest.approx(-ba[m]["delta"], abs=1e-6)
        assert ab[m]["p_value"] == pytest.approx(ba[m]["p_value"])
        assert ab[m]["system_ci"] == pytest.approx(ba[m]["baseline_ci"], rel=1e-5)


def test_identical_outputs_are_no_difference():
    refs = ["the cat sat on the mat", "a dog ran home"] * 10
    hyps = ["the cat sat", "a dog ran"] * 10
    out = paired_bootstrap(hyps, list(hyps), refs)
    assert all(out[m]["delta"] == 0 and out[m]["p_value"] == 1.0 for m in out)


def test_a_much_better_system_is_significant_and_a_slightly_noisy_one_is_not():
    rng = np.random.default_rng(0)
    refs = [" ".join(rng.choice(WORDS, 6)) for _ in range(60)]
    bad = [" ".join(rng.choice(WORDS, 6)) for _ in range(60)]
    assert paired_bootstrap(bad, refs, refs)["chrf"]["p_value"] < 0.01
    near = list(bad)
    near[0] = refs[0]  # one sentence of sixty fixed
    assert paired_bootstrap(bad, near, refs)["chrf"]["p_value"] > 0.05


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap(["a"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(["a"], ["a"], ["a"], metrics=("ter",))
