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
