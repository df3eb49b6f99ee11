"""String-overlap metrics from sacrebleu: chrF, chrF++ and BLEU.

All functions take parallel lists (one hypothesis and one reference per
segment), strip surrounding whitespace (stray newlines and spaces from
generation should not change a score), and return sacrebleu's native 0-100
scale.

Why chrF is the default reward-side metric for Arabic: it works on character
n-grams, so it needs no tokenizer and degrades gracefully on Arabic's rich
morphology (clitics attached to words), where word-level BLEU is harsh.

BLEU uses sacrebleu's standard ``13a`` tokenizer by default so that numbers
carry the usual sacrebleu signature. Note that ``13a`` does not split Arabic
punctuation (``،`` ``؛`` ``؟``) from words; pass ``tokenize="intl"`` to split
all Unicode punctuation. ``tokenize="flores200"`` (spBLEU) is deliberately not
offered as a default: it downloads a SentencePiece model at first use, and
nothing in ppolab may download at run time.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF

__all__ = ["bleu", "chrf", "chrf_pp", "sentence_bleu", "sentence_chrf", "sentence_chrf_pp"]


# sacrebleu metric objects build tokenizers and caches on construction, so
# make each configuration once and reuse it. They hold no per-call state.
@functools.cache
def _chrf_metric(word_order: int) -> CHRF:
    return CHRF(word_order=word_order)


@functools.cache
def _bleu_metric(tokenize: str, sentence: bool) -> BLEU:
    # Sentence BLEU needs effective order: without it any sentence shorter
    # than four tokens (or with no matching 4-gram) scores exactly 0.
    return BLEU(tokenize=tokenize, effective_order=sentence)


def _clean(hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate parallel lists and strip whitespace."""
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("hyps and refs must be lists of strings, not a single string")
    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"hyps and refs differ in length: {len(hyps)} hypotheses, {len(refs)} references")
    for name, seq in (("hyps", hyps), ("refs", refs)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{name}[{i}] is {type(s).__name__}, expected str")
    return [h.strip() for h in hyps], [r.strip() for r in refs]


def _corpus(hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    hyps, refs = _clean(hyps, refs)
    if not hyps:
        # A corpus score of nothing is undefined (sacrebleu itself crashes
        # with an IndexError); say so instead of returning a made-up 0.
        raise ValueError("corpus score of an empty list is undefined")
    return hyps, refs


# --------------------------------------------------------------------- corpus


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (character 6-grams, beta=2), 0-100."""
    hyps, refs = _corpus(hyps, refs)
    return float(_chrf_metric(0).corpus_score(hyps, [refs]).score)


def chrf_pp(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF++ (chrF plus word uni- and bigrams), 0-100."""
    hyps, refs = _corpus(hyps, refs)
    return float(_chrf_metric(2).corpus_score(hyps, [refs]).score)


def bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU, 0-100."""
    hyps, refs = _corpus(hyps, refs)
    return float(_bleu_metric(tokenize, False).corpus_score(hyps, [refs]).score)


# ------------------------------------------------------------------- sentence


def sentence_chrf(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """chrF of each (hypothesis, reference) pair, 0-100."""
    hyps, refs = _clean(hyps, refs)
    metric = _chrf_metric(0)
    return [float(metric.sentence_score(h, [r]).score) for h, r in zip(hyps, refs)]


def sentence_chrf_pp(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """chrF++ of each (hypothesis, reference) pair, 0-100."""
    hyps, refs = _clean(hyps, refs)
    metric = _chrf_metric(2)
    return [float(metric.sentence_score(h, [r]).score) for h, r in zip(hyps, refs)]


def sentence_bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> list[float]:
    """BLEU of each pair with effective n-gram order (so short sentences are not all 0), 0-100."""
    hyps, refs = _clean(hyps, refs)
    metric = _bleu_metric(tokenize, True)
    return [float(metric.sentence_score(h, [r]).score) for h, r in zip(hyps, refs)]
