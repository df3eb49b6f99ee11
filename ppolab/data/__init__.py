"""Data for the translation showcase: parallel-corpus loaders and prompt templates."""
from ppolab.data.loaders import (
    SHIPPED_SPLITS,
    CorpusError,
    LoadResult,
    SkippedRow,
    TranslationExample,
    load_parallel,
    load_shipped_corpus,
    shipped_corpus_dir,
)
from ppolab.data.templates import CHAT_INSTRUCTIONS, LANG_NAMES, PROMPT_TEMPLATES, build_prompt

__all__ = [
    "CHAT_INSTRUCTIONS",
    "CorpusError",
    "LANG_NAMES",
    "LoadResult",
    "PROMPT_TEMPLATES",
    "SHIPPED_SPLITS",
    "SkippedRow",
    "TranslationExample",
    "build_prompt",
    "load_parallel",
    "load_shipped_corpus",
    "shipped_corpus_dir",
]
