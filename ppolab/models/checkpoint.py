"""Saving and loading every model ppolab trains: one layout, written atomically.

A causal-LM checkpoint (SFT, DPO, ORPO, PPO policy) is one folder:

    path/config.json, model.safetensors   the model (`save_pretrained`); a LoRA model merged into its base
    path/tokenizer*, prompt_format.json   the tokenizer and the prompt format it was trained with
    path/adapter/                         a LoRA model's adapter alone (`peft.PeftModel.from_pretrained`)
    path/<extra>.json                     whatever the trainer records (config, history)

`load_model_checkpoint` reads it back (or a trainer's `out_dir` holding `final/`, or a pretrained
name). A reward model's folder holds the same causal-LM files under `backbone/` (`write_model_files`)
beside its head (`RewardModel.save`). Every folder is written through `ppolab.io.atomic_dir`: a
crash never leaves half a model.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from torch import nn

from ..io import atomic_dir, write_json
from .builders import is_peft, load_causal_lm, load_tokenizer
from .tokenizer import save_prompt_format
from .vocab_trim import apply_vocab_trim

__all__ = [
    "ADAPTER_DIR", "link_or_copy_tree", "load_model_checkpoint", "save_model_checkpoint", "write_model_files",
]

ADAPTER_DIR = "adapter"


def write_model_files(model: nn.Module, tokenizer, folder: str | Path) -> None:
    """`save_pretrained` the model and (if given) the tokenizer and its prompt format into `folder`.

    Not atomic on its own: call it inside `atomic_dir`.
    """
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        save_prompt_format(tokenizer, folder)


def link_or_copy_tree(src: str | Path, dst: str | Path) -> None:
    """Copy the folder `src` to `dst` with hard links where the file system allows (no bytes copied).

    Safe because checkpoint files are never rewritten in place: a new save replaces the folder.
    """
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def save_model_checkpoint(
    model: nn.Module, tokenizer, path: str | Path, extra: dict | None = None, keep: dict | None = None,
) -> Path:
    """Save `model` + `tokenizer` into `path` atomically; `extra` maps file name -> JSON data.

    A LoRA (peft) model is saved merged into its base, so a loader gets a plain causal LM, and its
    adapter alone goes to `path/adapter/` (loadable onto the base with `PeftModel.from_pretrained`).
    `keep` maps a subfolder name -> an existing folder to carry into the new `path` (hard links),
    e.g. the `best/` checkpoint a trainer wrote into the `path` this call replaces.
    """
    merged = copy.deepcopy(model).merge_and_unload() if is_peft(model) else model
    with atomic_dir(path) as tmp:
        write_model_files(merged, tokenizer, tmp)
        if merged is not model:
            model.save_pretrained(tmp / ADAPTER_DIR)  # a PeftModel saves only its adapter
        for name, data in (extra or {}).items():
            write_json(tmp / name, data)
        for name, src in (keep or {}).items():
            link_or_copy_tree(src, tmp / name)
    return Path(path)


def load_model_checkpoint(out_dir: str | Path, model_config=None):
    """`(model, tokenizer)` from a trainer's out_dir (its `final/`), a model folder itself, or a
    known pretrained name (`gemma3-270m`). `model_config` (a `ModelConfig`) sets dtype, quantisation
    and gradient checkpointing of the load; LoRA is the caller's to add (the merged model is loaded)."""
    from .pretrained import resolve_model_path

    path = Path(resolve_model_path(out_dir))
    for candidate in (path / "final", path):
        if (candidate / "config.json").is_file():
            model, tok = load_causal_lm(str(candidate), model_config).eval(), load_tokenizer(str(candidate))
            return apply_vocab_trim(model, tok, getattr(model_config, "vocab_trim", None)), tok
    raise FileNotFoundError(
        f"no SFT checkpoint at {path}: expected {path / 'final' / 'config.json'} or {path / 'config.json'} "
        "(train_sft writes one when given out_dir)"
    )
