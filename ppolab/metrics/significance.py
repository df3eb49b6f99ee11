"""Is a chrF / BLEU difference between two models more than chance? sacrebleu's paired bootstrap.

`paired_bootstrap(baseline, system, refs)` runs `sacrebleu.significance.PairedTest` with
``test_type="bs"`` (the Moses ``bootstrap-hypothesis-difference-significance.pl`` procedure, as
``sacrebleu --paired-bs`` does): both systems are rescored on the same 1000 resamples of the
segments; the p-value is the share of resamples whose centred score difference is at least the
observed one, and each system's 95% interval is half the spread between the 2.5th and 97.5th
percentile of its resampled scores (sacrebleu's ``estimate_ci``). The seed is sacrebleu's
(``SACREBLEU_SEED``, 12345 by default), so a report's figures are reproducible.

One correction: sacrebleu gives two *identical* outputs a p-value of 1/(n+1) (its strict ``>``
counts no resample); equal hypotheses have no difference to test, so they get p = 1.0 here.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from .sacre import _corpus

__all__ = ["METRICS", "paired_bootstrap"]

METRICS = ("chrf", "bleu")


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    # The same configurations as ppolab.metrics.chrf / bleu (chrF: char 6-grams, beta 2; BLEU: 13a).
    return {"chrf": CHRF, "bleu": lambda: BLEU(tokenize="13a")}[name]()


def paired_bootstrap(baseline: Sequence[str], system: Sequence[str], refs: Sequence[str],
                     metrics: Sequence[str] = METRICS, n_samples: int = 1000) -> dict[str, dict]:
    """`{metric: {baseline, system, delta, p_value, baseline_ci, system_ci, n, n_samples, seed}}`.

    `baseline`, `system`: hypotheses of the two models for the same segments; `refs`: one
    reference each. Scores are sacrebleu's 0-100; `*_ci` is the half-width of the 95% interval
    around the resampled mean; `delta` = system - baseline.
    """
    from sacrebleu.significance import PairedTest

    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    base, refs_b = _corpus(baseline, refs)
    sys_, refs_s = _corpus(system, refs)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; expected some of {METRICS}")
    objects = {m: _metric(m) for m in metrics}
    test = PairedTest([("baseline", base), ("system", sys_)], objects, [refs_b], test_type="bs",
                      n_samples=n_samples)
    _, results = test()
    names = [k for k in results if k != "System"]  # sacrebleu's own names: "chrF2", "BLEU", in order
    out = {}
    for m, name in zip(metrics, names):
        b, s = results[name]
        p = 1.0 if base == sys_ else float(s.p_value)
        out[m] = {"baseline": float(b.score), "system": float(s.score), "delta": float(s.score - b.score),
                  "p_value": p, "baseline_ci": float(b.ci), "system_ci": float(s.ci), "n": len(base),
                  "n_samples": n_samples, "seed": os.environ.get("SACREBLEU_SEED", "12345")}
    return out
