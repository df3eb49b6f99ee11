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

__all__ = ["CHAT_INSTRUCTIONS", "LANG_NAMES", "PROMPT_TEMPLATES", "build_prompt"]

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
    return PROMPT_TEMPLATES[key].format(source=source)
