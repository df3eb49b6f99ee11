"""Prompt templates for the translation directions.

The plain templates are deliberately short: the showcase fine-tunes tiny
models, whose context is small and which follow long instructions poorly.
Each ends with the target-language name and a colon, so the model's
continuation *is* the translation; there is no trailing space, because
tokenizers usually attach a word's leading space to the word's own token.

When the tokenizer has a chat template (instruction-tuned models), the
instruction is sent as a single user turn through it instead, with the
generation prompt appended so the model answers as the assistant.
"""
from __future__ import annotations

from typing import Any

__all__ = ["CHAT_INSTRUCTIONS", "FEWSHOT_EXAMPLES", "LANG_NAMES", "PROMPT_FORMATS", "PROMPT_TEMPLATES", "bos_prefix",
           "build_prompt", "prompt_format", "stops_at_newline"]

LANG_NAMES = {"eng": "English", "fra": "French", "arb": "Arabic"}

# One template per supported direction, keyed by (src_lang, tgt_lang).
# The instruction stays in English for French sources too: small models are
# English-centric, and one wording for both directions keeps the rewards
# comparable between them.
PROMPT_TEMPLATES: dict[tuple[str, str], str] = {
    # English -> Arabic
    ("eng", "arb"): "Translate English to Arabic:\n{source}\nArabic:",
    # French -> Arabic
    ("fra", "arb"): "Translate French to Arabic:\n{source}\nArabic:",
}

# The same instruction for chat models, without the trailing "Arabic:" cue:
# the chat template's assistant turn plays that role.
CHAT_INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("eng", "arb"): "Translate English to Arabic:\n{source}",
    ("fra", "arb"): "Translate French to Arabic:\n{source}",
}


PROMPT_FORMATS = ("plain", "fewshot")

# Few-shot examples for base models (no chat template, no instruction tuning). Written for this
# file, none taken from the corpus's splits, so no test or FLORES sentence leaks into a prompt.
FEWSHOT_EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "eng": [
        ("Where is the train station?", "أين محطة القطار؟"),
        ("I would like a cup of coffee, please.", "أريد فنجان قهوة، من فضلك."),
        ("The meeting starts at nine in the morning.", "يبدأ الاجتماع في التاسعة صباحًا."),
    ],
    "fra": [
        ("Où est la gare ?", "أين محطة القطار؟"),
        ("Je voudrais une tasse de café, s'il vous plaît.", "أريد فنجان قهوة، من فضلك."),
        ("La réunion commence à neuf heures du matin.", "يبدأ الاجتماع في التاسعة صباحًا."),
    ],
}


def prompt_format(tokenizer: Any) -> str:
    """The format a model's prompts use: set on its tokenizer (`ppolab_prompt.json` in its folder,
    see `ppolab.models.load_tokenizer`), "plain" when unset."""
    fmt = getattr(tokenizer, "ppolab_prompt_format", None) or "plain"
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {fmt!r}: expected one of {PROMPT_FORMATS}")
    return fmt


def stops_at_newline(tokenizer: Any) -> bool:
    """Few-shot prompts put one translation per line: a newline ends the response like EOS does."""
    return prompt_format(tokenizer) == "fewshot"


def bos_prefix(tokenizer: Any) -> str:
    """The BOS token's text when the tokenizer adds one by default (Gemma, Llama), else "".

    ppolab encodes prompts with `add_special_tokens=False` everywhere (SFT, PPO, reward model,
    evaluation), so the BOS lives in the prompt string and every stage sees it exactly once.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if tokenizer is None or bos is None:
        return ""
    cached = getattr(tokenizer, "_ppolab_adds_bos", None)
    if cached is None:
        cached = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        try:
            tokenizer._ppolab_adds_bos = cached
        except AttributeError:
            pass
    return bos if cached else ""


def _fewshot_prompt(source: str, src_lang: str, tgt_lang: str) -> str:
    src_name, tgt_name = LANG_NAMES[src_lang], LANG_NAMES[tgt_lang]
    shots = "".join(f"{src_name}: {s}\n{tgt_name}: {t}\n" for s, t in FEWSHOT_EXAMPLES[src_lang])
    return f"{shots}{src_name}: {source}\n{tgt_name}:"


def build_prompt(source: str, src_lang: str, tgt_lang: str, tokenizer: Any = None) -> str:
    """The prompt asking to translate ``source`` from ``src_lang`` to ``tgt_lang``.

    Uses ``tokenizer.apply_chat_template`` when the tokenizer has a (non-empty)
    ``chat_template``; otherwise, or with ``tokenizer=None``, the plain template
    from `PROMPT_TEMPLATES`. Language codes are ``eng``, ``fra``, ``arb``.

    Raises:
        ValueError: unsupported direction, or an empty ``source``.
        TypeError: the chat template did not render to a string.
    """
    key = (src_lang, tgt_lang)
    if key not in PROMPT_TEMPLATES:
        supported = ", ".join(f"{s}->{t}" for s, t in PROMPT_TEMPLATES)
        raise ValueError(f"no prompt template for {src_lang}->{tgt_lang}; supported: {supported}")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source text must be a non-empty string, got {source!r}")
    source = source.strip()

    if getattr(tokenizer, "chat_template", None):
        # str.format only substitutes into the template, so braces inside the
        # source sentence are safe.
        message = {"role": "user", "content": CHAT_INSTRUCTIONS[key].format(source=source)}
        prompt = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
        if not isinstance(prompt, str):
            raise TypeError(
                f"tokenizer.apply_chat_template(tokenize=False) returned {type(prompt).__name__}, expected str"
            )
        return prompt
    if prompt_format(tokenizer) == "fewshot":
        return bos_prefix(tokenizer) + _fewshot_prompt(source, src_lang, tgt_lang)
    return bos_prefix(tokenizer) + PROMPT_TEMPLATES[key].format(source=source)
