"""Score translations with COMET, speaking JSON lines on stdin/stdout.

Runs inside the isolated comet_env project (unbabel-comet cannot share
ppolab's environment; see README.md here). ppolab's ``CometScorer`` starts it
as a subprocess; it can also be run by hand:

    echo '{"checkpoint": "/models/wmt22-comet-da", "data": [{"src": "Hello", "mt": "مرحبا", "ref": "مرحبا"}]}' \
        | HF_HUB_OFFLINE=1 uv run --project comet_env python comet_env/score_comet.py

Protocol. Each stdin line is one request, a JSON object:

    {"checkpoint": PATH,           # checkpoint dir (with checkpoints/model.ckpt) or the .ckpt file
     "batch_size": 16,             # optional
     "gpus": 0 | 1 | null,         # optional; null = 1 if CUDA is available, else 0
     "data": [{"src": ..., "mt": ..., "ref": ...}, ...]}

and gets exactly one stdout line back:

    {"scores": [float, ...], "system_score": float}     # one score per data item
    {"error": "message"}                                 # then the script exits with status 1

The script serves requests until stdin closes, so a caller can keep it alive
and pay for loading the model once. ``--checkpoint``, ``--batch-size`` and
``--gpus`` on the command line give defaults for requests that omit them.

Everything that libraries print (Lightning banners, warnings) goes to stderr:
file descriptor 1 is pointed at stderr at start, and responses are written to
a private copy of the original stdout, so stdout carries protocol lines only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path


def resolve_checkpoint(path: str) -> Path:
    """Accept the model folder (as laid out on the Hub) or the .ckpt file itself."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "model.ckpt"
    if not p.is_file():
        raise FileNotFoundError(
            f"COMET checkpoint not found at {p}; nothing is downloaded - "
            "point at a local copy of e.g. Unbabel/wmt22-comet-da (see comet_env/README.md)"
        )
    # comet reads <model dir>/hparams.yaml, two levels above the .ckpt file.
    hparams = p.parents[1] / "hparams.yaml"
    if not hparams.is_file():
        raise FileNotFoundError(f"COMET checkpoint {p} has no {hparams}; copy the whole model folder")
    return p


class Scorer:
    """Loads checkpoints lazily and keeps the last one for later requests."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._model = None

    def model(self, checkpoint: Path):
        if self._path != checkpoint:
            # Imported here so that --help and protocol errors work without comet installed.
            from comet import load_from_checkpoint

            # local_files_only: the encoder's tokenizer/config (hparams.yaml's
            # `pretrained_model`) must come from disk, never from the Hub.
            self._model = load_from_checkpoint(str(checkpoint), local_files_only=True)
            self._path = checkpoint
        return self._model

    def score(self, request: dict, defaults: argparse.Namespace) -> dict:
        if not isinstance(request, dict):
            raise TypeError("request must be a JSON object")
        checkpoint = request.get("checkpoint") or defaults.checkpoint
        if not checkpoint:
            raise ValueError("request has no 'checkpoint' and --checkpoint was not given")
        data = request.get("data")
        if not isinstance(data, list):
            raise TypeError("request 'data' must be a list of {'src', 'mt', 'ref'} objects")
        for i, item in enumerate(data):
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("src", "mt", "ref")):
                raise ValueError(f"data[{i}] must have string fields 'src', 'mt' and 'ref'")
        if not data:
            return {"scores": [], "system_score": float("nan")}

        checkpoint = resolve_checkpoint(checkpoint)  # before anything slow: fail fast
        batch_size = int(request.get("batch_size") or defaults.batch_size)
        gpus = request.get("gpus", defaults.gpus)
        if gpus is None:
            import torch

            gpus = 1 if torch.cuda.is_available() else 0

        model = self.model(checkpoint)
        out = model.predict(data, batch_size=batch_size, gpus=int(gpus), progress_bar=False)
        scores = [float(s) for s in out.scores]
        if len(scores) != len(data):
            raise RuntimeError(f"COMET returned {len(scores)} scores for {len(data)} segments")
        return {"scores": scores, "system_score": float(sum(scores) / len(scores))}


def _json_safe(obj: dict) -> str:
    # NaN is not valid JSON; an empty request's system score becomes null.
    if "system_score" in obj and isinstance(obj["system_score"], float) and math.isnan(obj["system_score"]):
        obj = {**obj, "system_score": None}
    return json.dumps(obj, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default checkpoint for requests that name none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=None, help="0 or 1; default: 1 if CUDA is available")
    args = parser.parse_args(argv)

    # Keep stdout for protocol lines only: duplicate it for ourselves, then
    # point fd 1 (and Python's sys.stdout) at stderr for everything else.
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    scorer = Scorer()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = scorer.score(json.loads(line), args)
        except Exception as exc:  # report any failure on the protocol, then stop
            traceback.print_exc(file=sys.stderr)
            reply.write(_json_safe({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            reply.flush()
            return 1
        reply.write(_json_safe(result) + "\n")
        reply.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
