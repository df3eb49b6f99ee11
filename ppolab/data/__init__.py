"""Data for the translation task: parallel-corpus loaders, the user's own splits, prompt templates."""
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
    chat_instruction, fewshot_from_examples, language_name, parse_pairs, plain_template, prompt_format,
    stops_at_newline,
)
from ppolab.data.user import check_context, held_out, load_pairs, load_user_splits

__all__ = [
    "FEWSHOT_EXAMPLES", "PROMPT_FORMATS", "bos_prefix", "prompt_format", "stops_at_newline",
    "CHAT_INSTRUCTIONS", "chat_instruction", "plain_template", "language_name", "parse_pairs",
    "fewshot_from_examples", "check_context", "held_out", "load_pairs", "load_user_splits",
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
