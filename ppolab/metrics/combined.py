"""A weighted blend of COMET, embedding similarity (BERTScore-like) and chrF.

The default weights, comet 0.5 / bertscore 0.3 / chrf 0.2, are the project's
seed weights. A metric takes part only if it can be computed: chrF always can
(sacrebleu, no model), COMET and BERTScore only when a scorer is passed. The
weights of the metrics that take part are renormalised to sum to 1, so the
blend stays on the same scale whatever is available: with chrF alone its
weight is 1.0; with chrF and BERTScore the default 0.2/0.3 become 0.4/0.6.

Scales: each metric enters the blend on a ~[0, 1] scale.
  * chrf       sacrebleu's 0-100 score divided by 100 -> [0, 1]
  * comet      as the checkpoint gives it (wmt22-comet-da: roughly [0, 1])
  * bertscore  EmbeddingSimilarity F1, [-1, 1] and in practice (0, 1]
Reports from ``corpus_scores`` keep chrF, chrF++ and BLEU on the familiar
0-100 scale; only the blend uses chrF / 100.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from . import sacre

__all__ = ["DEFAULT_WEIGHTS", "CombinedMetric"]

DEFAULT_WEIGHTS: dict[str, float] = {"comet": 0.5, "bertscore": 0.3, "chrf": 0.2}
KNOWN_METRICS = ("comet", "bertscore", "chrf")


class SourceAwareScorer(Protocol):
    """What CombinedMetric needs from a COMET-like scorer (e.g. CometScorer)."""

    def score(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> list[float]: ...


class PairScorer(Protocol):
    """What CombinedMetric needs from a BERTScore-like scorer (e.g. EmbeddingSimilarity)."""

    def score(self, hyps: Sequence[str], refs: Sequence[str]) -> list[float]: ...


class CombinedMetric:
    """Weighted mean of the available metrics, each on a ~[0, 1] scale.

    weights: metric name -> non-negative weight; names from "comet",
        "bertscore", "chrf". A metric missing from ``weights`` (or weighted 0)
        is not used even if its scorer is given.
    comet: a COMET-like scorer, ``score(sources, hyps, refs)``.
    bertscore: a BERTScore-like scorer, ``score(hyps, refs)``.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        comet: SourceAwareScorer | None = None,
        bertscore: PairScorer | None = None,
    ) -> None:
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(weights) - set(KNOWN_METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) in weights: {sorted(unknown)}; known: {list(KNOWN_METRICS)}")
        for name, w in weights.items():
            if not (float(w) >= 0):  # also rejects NaN
                raise ValueError(f"weight for {name!r} must be >= 0, got {w!r}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.comet = comet
        self.bertscore = bertscore

        has_scorer = {"chrf": True, "comet": comet is not None, "bertscore": bertscore is not None}
        used = {name: w for name, w in self.weights.items() if has_scorer[name] and w > 0}
        total = sum(used.values())
        if total <= 0:
            raise ValueError(
                f"no metric is both available and positively weighted (weights={self.weights}, "
                f"scorers given: {[n for n, ok in has_scorer.items() if ok]})"
            )
        # Effective weights, in the order of KNOWN_METRICS for stable reports.
        self.available: dict[str, float] = {n: used[n] / total for n in KNOWN_METRICS if n in used}

    # ------------------------------------------------------------------ scores

    def _check(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> None:
        if not (len(sources) == len(hyps) == len(refs)):
            raise ValueError(
                f"sources, hyps and refs differ in length: {len(sources)}, {len(hyps)}, {len(refs)}"
            )

    def metric_sentence_scores(
        self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]
    ) -> dict[str, list[float]]:
        """Per-segment scores of each used metric, on the blend's ~[0, 1] scale."""
        out = self._model_scores(sources, hyps, refs)
        if "chrf" in self.available:
            out["chrf"] = [s / 100.0 for s in sacre.sentence_chrf(hyps, refs)]
        return out

    def _model_scores(
        self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]
    ) -> dict[str, list[float]]:
        """Segment scores of the used model-based metrics (COMET, BERTScore)."""
        self._check(sources, hyps, refs)
        out: dict[str, list[float]] = {}
        if "comet" in self.available:
            out["comet"] = [float(s) for s in self.comet.score(sources, hyps, refs)]
        if "bertscore" in self.available:
            out["bertscore"] = [float(s) for s in self.bertscore.score(hyps, refs)]
        for name, scores in out.items():
            if len(scores) != len(hyps):
                raise RuntimeError(f"{name} scorer returned {len(scores)} scores for {len(hyps)} segments")
        return out

    def sentence_scores(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
        """The blended score of each segment (e.g. a per-sample reward), ~[0, 1]."""
        per_metric = self.metric_sentence_scores(sources, hyps, refs)
        return [
            sum(self.available[name] * per_metric[name][i] for name in self.available) for i in range(len(hyps))
        ]

    def corpus_scores(self, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        """Corpus-level report.

        Keys: "comet" and "bertscore" (means of segment scores; present when
        used), "chrf", "chrf++" and "bleu" (sacrebleu corpus scores, 0-100;
        chrF++ and BLEU are for reporting only, never blended), and "combined",
        the weighted blend of the used metrics' corpus values with chrF / 100.
        Corpus chrF pools n-gram statistics over all segments, so "combined" is
        not exactly the mean of ``sentence_scores``.
        """
        self._check(sources, hyps, refs)
        if not hyps:
            raise ValueError("corpus scores of an empty list are undefined")
        per_metric = self._model_scores(sources, hyps, refs)
        report: dict[str, float] = {}
        blend_values: dict[str, float] = {}
        for name in ("comet", "bertscore"):
            if name in per_metric:
                report[name] = blend_values[name] = sum(per_metric[name]) / len(per_metric[name])
        report["chrf"] = sacre.chrf(hyps, refs)
        report["chrf++"] = sacre.chrf_pp(hyps, refs)
        report["bleu"] = sacre.bleu(hyps, refs)
        blend_values["chrf"] = report["chrf"] / 100.0
        report["combined"] = sum(w * blend_values[name] for name, w in self.available.items())
        return report

    def __repr__(self) -> str:
        return f"CombinedMetric(available={self.available})"
