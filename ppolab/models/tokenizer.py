"""A tokenizer that needs no download: byte-level BPE trained in memory on the given texts."""
from __future__ import annotations

from typing import Iterable

# A few lines in each script so the default tokenizer has merges for English, French and Arabic
# even when no corpus is given (core tests, benchmarks).
_DEFAULT_TEXTS = [
    "Translate English to Arabic: Good morning, how are you today?",
    "Traduire du français vers l'arabe : Bonjour, comment allez-vous ?",
    "صباح الخير، كيف حالك اليوم؟",
    "The weather is nice and the train leaves at nine o'clock.",
    "Le temps est beau et le train part à neuf heures.",
    "الطقس جميل والقطار يغادر في الساعة التاسعة.",
    "Where is the nearest pharmacy? I need some medicine for my headache.",
    "أين أقرب صيدلية؟ أحتاج إلى دواء لصداعي.",
]

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE of `vocab_size` tokens on `texts` and wrap it for transformers.

    The pad token is distinct from EOS, and padding is on the left (generation needs it).
    Save it with `save_pretrained(dir)`; it loads back with `AutoTokenizer.from_pretrained(dir)`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) if texts is not None else list(_DEFAULT_TEXTS)
    if not texts:
        raise ValueError("build_tokenizer: texts is empty")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)
    return fast


# The prompt format a model was trained with travels with its tokenizer: `load_tokenizer` sets
# `tokenizer.ppolab_prompt_format` from this file, `save_prompt_format` writes it beside a saved
# tokenizer, and `ppolab.data.build_prompt` reads the attribute. So SFT, reward training, PPO and
# evaluation of one model folder always build the same prompts.
PROMPT_FORMAT_FILE = "ppolab_prompt.json"


def save_prompt_format(tokenizer, folder) -> None:
    import json
    from pathlib import Path

    fmt = getattr(tokenizer, "ppolab_prompt_format", None)
    shots = getattr(tokenizer, "ppolab_fewshot", None)  # few-shot rows drawn from a user's train split
    if fmt or shots:
        body = {"format": fmt or "plain", **({"fewshot": shots} if shots else {})}
        (Path(folder) / PROMPT_FORMAT_FILE).write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")


def read_prompt_fewshot(folder) -> dict | None:
    """The few-shot examples saved beside a tokenizer (`{"src->tgt": [[source, target], ...]}`), or None."""
    import json
    from pathlib import Path

    path = Path(folder) / PROMPT_FORMAT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("fewshot")
    except (ValueError, AttributeError):
        return None  # read_prompt_format reports a malformed file


def read_prompt_format(folder) -> str | None:
    import json
    from pathlib import Path

    path = Path(folder) / PROMPT_FORMAT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected {{\"format\": \"plain\" | \"fewshot\"}} ({e})") from e


def token_texts(tokenizer) -> list[str]:
    """The text of every token id decoded alone (cached on the tokenizer; ~3 s for 262k tokens)."""
    cached = getattr(tokenizer, "_ppolab_token_texts", None)
    if cached is None:
        cached = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        tokenizer._ppolab_token_texts = cached
    return cached


def newline_token_ids(tokenizer) -> list[int]:
    """Ids of every token whose text contains a newline."""
    return [i for i, t in enumerate(token_texts(tokenizer)) if "\n" in t]


def stop_token_ids(tokenizer, at_newline: bool) -> list[int]:
    """The ids that end a response: EOS, and every newline-carrying token when `at_newline`."""
    return [tokenizer.eos_token_id] + (newline_token_ids(tokenizer) if at_newline else [])
