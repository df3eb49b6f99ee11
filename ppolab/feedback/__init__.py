"""Human feedback collection for RLHF, independent of any model.

Candidates come from a pluggable ``CandidateSource`` (``source_text ->
[Candidate(text, score)]``, best first by a reward model) or from items the
pipeline adds with ``FeedbackStore.add_items``. Annotators rank them and may
write a better translation, in a browser (``serve``/``make_server``) or a
terminal (``run_terminal``). ``FeedbackStore.export_jsonl`` writes the
resulting preference pairs (see ``pairs``) for reward-model training.
"""
from ppolab.feedback.pairs import dedupe_pairs, load_ratings, pairs_from_feedback, pairs_from_ratings
from ppolab.feedback.server import FeedbackServer, make_server, serve
from ppolab.feedback.store import (
    EXPORT_FILENAME,
    Candidate,
    CandidateSource,
    FeedbackError,
    FeedbackItem,
    FeedbackStore,
    SubmitResult,
)
from ppolab.feedback.terminal import parse_ranking, run_terminal

__all__ = [
    "Candidate", "CandidateSource", "FeedbackError", "FeedbackItem", "FeedbackStore",
    "SubmitResult", "EXPORT_FILENAME", "FeedbackServer", "make_server", "serve",
    "run_terminal", "parse_ranking", "pairs_from_feedback", "pairs_from_ratings",
    "load_ratings", "dedupe_pairs",
]
