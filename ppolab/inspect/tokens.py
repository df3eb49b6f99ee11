"""Readable text of each token of a response: whole characters, or the token's bytes, never U+FFFD.

Byte-level tokenizers split a multi-byte character (every Arabic letter is two UTF-8 bytes) over
tokens, and decoding one such token alone prints `�`. Here the response's bytes are read as UTF-8
once, and each character goes to the token holding its last byte. A token that completes no
character shows its own bytes (`\\xd8`); a byte that is not UTF-8 at all shows as `\\xNN` on the
token that holds it.
"""
from __future__ import annotations

import functools
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@functools.lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table, the alphabet byte-level BPE tokens are spelled in."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The raw bytes of one (non-special) token, or None when the tokenizer does not spell them out.

    Byte-level BPE (GPT-2 alphabet), SentencePiece byte fallback (`<0xD8>`) and SentencePiece
    pieces (`▁` is a space).
    """
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    if _is_byte_level(tokenizer):
        table = _byte_of_char()
        return bytes(table[ch] for ch in piece) if all(ch in table for ch in piece) else None
    return piece.replace("\u2581", " ").encode("utf-8")


def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 sequence that starts with `lead`; 0 if `lead` cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _escaped(raw: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in raw)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """One display string per token of `ids`; special tokens (EOS) show their name."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    texts = [""] * len(ids)
    stream: list[tuple[int, int]] = []  # (byte, index of the token holding it), a run between special tokens
    own: dict[int, bytes] = {}

    def flush() -> None:
        i = 0
        while i < len(stream):
            n = _utf8_length(stream[i][0])
            chunk = stream[i : i + n] if n else []
            try:
                char = bytes(b for b, _ in chunk).decode("utf-8") if n and len(chunk) == n else None
            except UnicodeDecodeError:
                char = None
            if char is None:  # not UTF-8 here: the byte is shown as a byte, on its own token
                texts[stream[i][1]] += _escaped(bytes([stream[i][0]]))
                i += 1
            else:
                texts[chunk[-1][1]] += char
                i += n
        stream.clear()

    for t, token_id in enumerate(ids):
        raw = None if token_id in special else token_bytes(tokenizer, token_id)
        if raw is None:
            flush()
            texts[t] = tokenizer.decode([token_id], skip_special_tokens=False).replace("\ufffd", "\\x??")
            continue
        own[t] = raw
        stream.extend((b, t) for b in raw)
    flush()
    for t, raw in own.items():
        if not texts[t]:  # holds only the first bytes of a character the next token completes
            texts[t] = _escaped(raw)
    # Control characters other than newline and tab print as nothing: show them as bytes too.
    return [_CONTROL.sub(lambda m: _escaped(m.group().encode()), text) for text in texts]
