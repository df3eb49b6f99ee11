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
           "build_prompt", "chat_instruction", "fewshot_from_examples", "language_name", "parse_pairs",
           "plain_template", "prompt_format", "stops_at_newline"]

# ISO 639-3 codes of common languages -> the English name the prompts use. A small table on purpose:
# a code outside it is an error naming it (a typo such as "fre" must not become a prompt saying
# "Translate fre to Arabic"); add a row here for another language.
LANG_NAMES = {
    "eng": "English", "fra": "French", "arb": "Arabic", "deu": "German", "spa": "Spanish", "ita": "Italian",
    "por": "Portuguese", "nld": "Dutch", "rus": "Russian", "ukr": "Ukrainian", "pol": "Polish", "ces": "Czech",
    "ron": "Romanian", "hun": "Hungarian", "ell": "Greek", "swe": "Swedish", "dan": "Danish", "nob": "Norwegian",
    "fin": "Finnish", "tur": "Turkish", "heb": "Hebrew", "pes": "Persian", "urd": "Urdu", "hin": "Hindi",
    "ben": "Bengali", "tam": "Tamil", "zho": "Chinese", "cmn": "Chinese", "jpn": "Japanese", "kor": "Korean",
    "vie": "Vietnamese", "tha": "Thai", "ind": "Indonesian", "zsm": "Malay", "swh": "Swahili", "amh": "Amharic",
    "hau": "Hausa", "yor": "Yoruba", "cat": "Catalan", "eus": "Basque",
}


def language_name(code: str) -> str:
    """The English name of an ISO 639-3 code in `LANG_NAMES`; ValueError naming an unknown one."""
    try:
        return LANG_NAMES[code]
    except (KeyError, TypeError):
        raise ValueError(f"unknown language code {code!r}: expected an ISO 639-3 code from ppolab.data.LANG_NAMES "
                         f"(e.g. eng, fra, arb, deu, spa)") from None


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """`"eng->arb,fra->arb"` -> `[("eng", "arb"), ("fra", "arb")]`, in order, each pair once.

    Raises ValueError naming the bad part: no `->`, an unknown code, a pair from a language to
    itself, a pair given twice, or nothing at all.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"language pairs {text!r}: expected e.g. 'eng->arb,fra->arb' or 'deu->eng'")
    out: list[tuple[str, str]] = []
    for part in text.split(","):
        src, sep, tgt = part.strip().partition("->")
        src, tgt = src.strip(), tgt.strip()
        if not sep or not src or not tgt or "->" in tgt:
            raise ValueError(f"language pair {part.strip()!r} in {text!r}: expected SOURCE->TARGET, e.g. eng->arb")
        unknown = [c for c in (src, tgt) if c not in LANG_NAMES]
        if unknown:
            raise ValueError(f"language pair {src}->{tgt}: unknown code(s) {', '.join(map(repr, unknown))}; "
                             "expected ISO 639-3 codes from ppolab.data.LANG_NAMES (e.g. eng, fra, arb, deu)")
        if src == tgt:
            raise ValueError(f"language pair {src}->{tgt}: a translation needs two languages")
        if (src, tgt) in out:
            raise ValueError(f"language pair {src}->{tgt} is given twice in {text!r}")
        out.append((src, tgt))
    return out


def plain_template(src_lang: str, tgt_lang: str) -> str:
    """The plain prompt of a pair, `{source}` left to fill."""
    return f"Translate {language_name(src_lang)} to {language_name(tgt_lang)}:\n{{source}}\n{language_name(tgt_lang)}:"


def chat_instruction(src_lang: str, tgt_lang: str) -> str:
    """The same instruction for chat models, without the trailing cue: the assistant turn plays that role."""
    return f"Translate {language_name(src_lang)} to {language_name(tgt_lang)}:\n{{source}}"


# The shipped directions, spelled out (the instruction stays in English for French sources too:
# small models are English-centric, and one wording keeps the rewards comparable). Any other pair
# of `LANG_NAMES` codes gets the same wording from `plain_template` / `chat_instruction`.
PROMPT_TEMPLATES: dict[tuple[str, str], str] = {k: plain_template(*k) for k in (("eng", "arb"), ("fra", "arb"))}
CHAT_INSTRUCTIONS: dict[tuple[str, str], str] = {k: chat_instruction(*k) for k in PROMPT_TEMPLATES}


PROMPT_FORMATS = ("plain", "fewshot")

# Few-shot examples for base models (no chat template, no instruction tuning), by pair. Written for
# this file, none taken from the corpus's splits, so no test or FLORES sentence leaks into a prompt.
# A pair without shipped examples takes them from the user's train split (`fewshot_from_examples`),
# kept on the tokenizer as `ppolab_fewshot` and saved with every model (ppolab_prompt.json).
FEWSHOT_EXAMPLES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("eng", "arb"): [
        ("Where is the train station?", "أين محطة القطار؟"),
        ("I would like a cup of coffee, please.", "أريد فنجان قهوة، من فضلك."),
        ("The meeting starts at nine in the morning.", "يبدأ الاجتماع في التاسعة صباحًا."),
    ],
    ("fra", "arb"): [
        ("Où est la gare ?", "أين محطة القطار؟"),
        ("Je voudrais une tasse de café, s'il vous plaît.", "أريد فنجان قهوة، من فضلك."),
        ("La réunion commence à neuf heures du matin.", "يبدأ الاجتماع في التاسعة صباحًا."),
    ],
}
FEWSHOT_COUNT = 3
_FEWSHOT_MAX_CHARS = 120  # short shots: a base model's prompt stays small, and long rows are rarely typical


def fewshot_from_examples(examples, pairs, k: int = FEWSHOT_COUNT) -> dict[str, list[list[str]]]:
    """`{"src->tgt": [[source, target], ...]}`: k examples of each pair with no shipped ones, drawn
    from `examples` (the user's train split) in a stable order (crc32 of the source), short ones
    first. Pairs with shipped examples are left out; a pair with no example at all is an error."""
    import zlib

    out = {}
    for src, tgt in pairs:
        if (src, tgt) in FEWSHOT_EXAMPLES:
            continue
        rows = [ex for ex in examples if (ex.src_lang, ex.tgt_lang) == (src, tgt)]
        if not rows:
            raise ValueError(f"no few-shot examples for {src}->{tgt}: ppolab ships none for this pair and the "
                             "train split has no row of it")
        rows.sort(key=lambda ex: (len(ex.source) + len(ex.target) > _FEWSHOT_MAX_CHARS,
                                  zlib.crc32(ex.source.encode("utf-8"))))
        out[f"{src}->{tgt}"] = [[ex.source, ex.target] for ex in rows[:k]]
    return out


def _fewshot_pairs(tokenizer, src_lang: str, tgt_lang: str) -> list[tuple[str, str]]:
    if tokenizer is not None and not hasattr(tokenizer, "ppolab_fewshot"):
        # A tokenizer loaded from a model folder: its shots were saved beside it (ppolab_prompt.json).
        from ..models.tokenizer import read_prompt_fewshot

        folder = getattr(tokenizer, "name_or_path", None)
        try:
            tokenizer.ppolab_fewshot = read_prompt_fewshot(folder) if folder else None
        except (AttributeError, OSError):
            pass
    own = (getattr(tokenizer, "ppolab_fewshot", None) or {}).get(f"{src_lang}->{tgt_lang}")
    if own:
        return [tuple(p) for p in own]
    if (src_lang, tgt_lang) in FEWSHOT_EXAMPLES:
        return FEWSHOT_EXAMPLES[(src_lang, tgt_lang)]
    raise ValueError(f"no few-shot examples for {src_lang}->{tgt_lang}: ppolab ships them for "
                     f"{', '.join(f'{s}->{t}' for s, t in FEWSHOT_EXAMPLES)}; for another pair the pipeline "
                     "draws them from the train split (tokenizer.ppolab_fewshot)")


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


def _fewshot_prompt(source: str, src_lang: str, tgt_lang: str, tokenizer: Any = None) -> str:
    src_name, tgt_name = language_name(src_lang), language_name(tgt_lang)
    shots = "".join(f"{src_name}: {s}\n{tgt_name}: {t}\n" for s, t in _fewshot_pairs(tokenizer, src_lang, tgt_lang))
    return f"{shots}{src_name}: {source}\n{tgt_name}:"


def build_prompt(source: str, src_lang: str, tgt_lang: str, tokenizer: Any = None) -> str:
    """The prompt asking to translate ``source`` from ``src_lang`` to ``tgt_lang``.

    Uses ``tokenizer.apply_chat_template`` when the tokenizer has a (non-empty)
    ``chat_template``; otherwise, or with ``tokenizer=None``, the plain template
    (`plain_template`), or the few-shot one when the tokenizer's format is "fewshot".
    Language codes are ISO 639-3 codes of `LANG_NAMES` (``eng``, ``fra``, ``arb``, ``deu`` ...).

    Raises:
        ValueError: an unknown language code, a pair from a language to itself, an empty
            ``source``, or a few-shot prompt for a pair with no examples.
        TypeError: the chat template did not render to a string.
    """
    language_name(src_lang), language_name(tgt_lang)  # unknown codes fail first, named
    if src_lang == tgt_lang:
        raise ValueError(f"no prompt for {src_lang}->{tgt_lang}: a translation needs two languages")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source text must be a non-empty string, got {source!r}")
    source = source.strip()

    if getattr(tokenizer, "chat_template", None):
        # str.format only substitutes into the template, so braces inside the
        # source sentence are safe.
        message = {"role": "user", "content": chat_instruction(src_lang, tgt_lang).format(source=source)}
        prompt = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
        if not isinstance(prompt, str):
            raise TypeError(
                f"tokenizer.apply_chat_template(tokenize=False) returned {type(prompt).__name__}, expected str"
            )
        return prompt
    if prompt_format(tokenizer) == "fewshot":
        return bos_prefix(tokenizer) + _fewshot_prompt(source, src_lang, tgt_lang, tokenizer)
    return bos_prefix(tokenizer) + plain_template(src_lang, tgt_lang).format(source=source)
