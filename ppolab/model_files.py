"""Check a model folder before transformers reads it, so a bad one fails with the file and the fault.

transformers' own errors name neither: a truncated `model.safetensors` says "incomplete metadata",
missing tokenizer files say "You need to have sentencepiece or tiktoken installed". These checks
read only file names, sizes and the small safetensors headers: cheap enough for every load.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def check_safetensors(path: str | os.PathLike) -> None:
    """`path` must hold a whole safetensors file: a readable header and every tensor's bytes."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UserError(f"{path}: truncated safetensors file ({size} bytes, not even a header)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise UserError(f"{path}: truncated or corrupt safetensors file ({size} bytes; its header "
                            f"alone claims {8 + n})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object)")
    ends = [t["data_offsets"][1] for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets", ())) == 2]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise UserError(f"{path}: truncated safetensors file ({size} bytes of {need}); "
                        "it was cut short while copying or saving")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _check_weights(folder: Path) -> None:
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise UserError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES[:2])}); "
                        "a half-written or incomplete model folder")
    if "model.safetensors" in present:
        check_safetensors(folder / "model.safetensors")
    elif "model.safetensors.index.json" in present:
        index = _read_json(folder / "model.safetensors.index.json")
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if not (folder / shard).is_file():
                raise UserError(f"{folder / shard}: missing (listed in model.safetensors.index.json)")
            check_safetensors(folder / shard)


def check_model_folder(path: str | os.PathLike, what: str = "model", tokenizer: bool = True) -> Path:
    """The folder that holds the model (`path` or, for an SFT output, `path/final`), checked whole.

    Raises `UserError` naming the missing or broken file. A pretrained name (`gemma3-270m`) stands
    for its prepared folder (prepared on first use).
    """
    from .models.pretrained import resolve_model_path

    path = Path(resolve_model_path(path))
    if not path.exists():
        raise UserError(f"{path}: no such {what} folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder ({what} expected)")
    folder = next((p for p in (path / "final", path) if (p / "config.json").is_file()), None)
    if folder is None:
        raise UserError(f"{path}: no config.json; not a {what} folder, or a half-written one")
    _read_json(folder / "config.json")
    _check_weights(folder)
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                        "copy them from the model this folder was trained from")
    return folder


def check_reward_folder(path: str | os.PathLike) -> Path:
    """A reward model as RewardModel.save writes it (backbone/ + head), or a classification checkpoint."""
    path = Path(path)
    if (path / "reward_config.json").is_file():
        _read_json(path / "reward_config.json")
        check_model_folder(path / "backbone", "reward model backbone", tokenizer=False)
        head = path / "head.safetensors"
        if not head.is_file():
            raise UserError(f"{head}: missing; a half-written reward model folder")
        check_safetensors(head)
        return path
    return check_model_folder(path, "reward model")
