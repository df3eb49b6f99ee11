"""Readable text of each token of a response: whole characters, or the token's bytes, never U+FFFD.

Byte-level tokenizers split a multi-byte character (every Arabic letter is two UTF-8 bytes) over
tokens, and decoding one such token alone prints `�`. Here each token gets the characters that
its bytes complete, found by decoding growing prefixes; a token that completes none is shown as
its bytes (`\\xd8`), and so is a byte sequence that is not UTF-8 at all.
"""
from __future__ import annotations

import functools
import re

_REPLACEMENT = "\ufffd"


@functools.lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table, which byte-level BPE tokens are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The raw bytes of one token when the tokenizer spells them out, else None.

    Handles byte-level BPE (GPT-2 alphabet) and SentencePiece byte fallback (`<0xD8>`).
    """
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str):
        return None
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    table = _byte_of_char()
    if piece and all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return None


def _as_bytes_text(tokenizer, token_id: int) -> str:
    raw = token_bytes(tokenizer, token_id)
    return "".join(f"\\x{b:02x}" for b in raw) if raw else "\\x??"


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """One display string per token of `ids` (special tokens such as EOS keep their name).

    Concatenated, the strings equal `tokenizer.decode(ids)` wherever that decodes cleanly.
    """
    texts, done = [], ""  # `done`: the decoded prefix up to the last token that completed a character
    for t, token_id in enumerate(ids):
        full = tokenizer.decode(ids[: t + 1], skip_special_tokens=False)
        new = full[len(done):] if full.startswith(done) else tokenizer.decode([token_id], skip_special_tokens=False)
        if new.endswith(_REPLACEMENT) and t + 1 < len(ids):
            # Probably a character still waiting for its next bytes: this token shows what it
            # completed (or its bytes), the token that completes the character shows all of it.
            complete = new.rstrip(_REPLACEMENT)
            texts.append(complete or _as_bytes_text(tokenizer, token_id))
            done += complete
            continue
        if _REPLACEMENT in new:  # bytes that never became a character
            new = new.replace(_REPLACEMENT, _as_bytes_text(tokenizer, token_id))
        texts.append(new)
        done = full
    return texts
