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
from ppolab.data.templates import (
    CHAT_INSTRUCTIONS, FEWSHOT_EXAMPLES, LANG_NAMES, PROMPT_FORMATS, PROMPT_TEMPLATES, bos_prefix, build_prompt,
    prompt_format, stops_at_newline,
)

__all__ = [
    "FEWSHOT_EXAMPLES", "PROMPT_FORMATS", "bos_prefix", "prompt_format", "stops_at_newline",
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
