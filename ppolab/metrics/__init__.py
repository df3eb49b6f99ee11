"""Translation quality metrics: sacrebleu overlap scores, COMET, embedding similarity, and their blend.

chrF/chrF++/BLEU work out of the box. COMET runs in the isolated comet_env
project through a subprocess (see comet_env/README.md), and the BERTScore-like
EmbeddingSimilarity uses any local transformer. Nothing here downloads models.
"""
from .combined import DEFAULT_WEIGHTS, CombinedMetric
from .comet import CometScorer, CometUnavailable
from .embedding import EmbeddingSimilarity
from .sacre import bleu, chrf, chrf_pp, sentence_bleu, sentence_chrf, sentence_chrf_pp
from .significance import paired_bootstrap

__all__ = [
    "DEFAULT_WEIGHTS",
    "CombinedMetric",
    "CometScorer",
    "CometUnavailable",
    "EmbeddingSimilarity",
    "bleu",
    "chrf",
    "chrf_pp",
    "paired_bootstrap",
    "sentence_bleu",
    "sentence_chrf",
    "sentence_chrf_pp",
]
