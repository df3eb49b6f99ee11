"""The run directory: run.json, metrics.jsonl, TensorBoard events, and which stages are done."""
from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ..io import write_json
from .config import config_to_dict

def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("ppolab", "torch", "transformers", "peft", "sacrebleu", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


class Run:
    """One run directory. Stages record their results in `stages.json` when they complete, so a
    re-run skips them; every file is written atomically."""

    def __init__(self, path: str | os.PathLike, config):
        """`config`: the run's PipelineConfig (or a plain dict), kept in run.json as plain data."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if dataclasses.is_dataclass(config):
            config = config_to_dict(config)
        self.config = config
        self._tb = None
        run_json = self.path / "run.json"
        if run_json.exists():
            previous = json.loads(run_json.read_text(encoding="utf-8"))
            if previous.get("config") != config:
                changed = sorted(k for k in set(config) | set(previous.get("config", {}))
                                 if config.get(k) != previous.get("config", {}).get(k))
                print(f"note: {run_json} was made with other settings ({', '.join(changed)}); "
                      "completed stages are kept, new stages use the new settings", file=sys.stderr)
        write_json(run_json, {"config": config, "seed": config.get("seed"), "versions": _versions(),
                              "git_commit": _git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- stages --------------------------------------------------------------------------------
    @property
    def stages(self) -> dict:
        p = self.path / "stages.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def complete(self, stage: str, result: dict) -> None:
        stages = self.stages
        stages[stage] = result
        write_json(self.path / "stages.json", stages)

    # -- metrics -------------------------------------------------------------------------------
    def log(self, stage: str, record: dict) -> None:
        """Append one record to metrics.jsonl (flushed and fsynced) and to TensorBoard."""
        row = {"stage": stage, "time": round(time.time(), 3), **record}
        line = json.dumps(row, ensure_ascii=False, default=float) + "\n"
        with open(self.path / "metrics.jsonl", "a+b") as f:
            # A kill mid-append leaves a line without its newline: end it, or this row joins it and
            # both are lost to the reader.
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        tb = self._writer()
        if tb is not None:
            step = int(record.get("step", record.get("epoch", 0)) or 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    tb.add_scalar(f"{stage}/{k}", v, step)
            tb.flush()

    def logger(self, stage: str):
        return lambda record: self.log(stage, record)

    def metrics(self, stage: str | None = None) -> list[dict]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write is skipped, not fatal
            if stage is None or row.get("stage") == stage:
                rows.append(row)
        return rows

    def step_rows(self, stage: str) -> list[dict]:
        """The stage's per-step rows, each step once, in step order, from its latest attempt.

        A row for step s supersedes every earlier row for steps >= s: the stage was resumed from
        a checkpoint taken before s (a kill after the row but before the checkpoint logs s twice)
        or restarted from scratch (s = 1), and those rows belong to work that was thrown away.
        """
        rows: list[dict] = []
        for row in self.metrics(stage):
            step = row.get("step")
            if isinstance(step, int) and not isinstance(step, bool):
                while rows and rows[-1]["step"] >= step:
                    rows.pop()
                rows.append(row)
        return rows

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard may be absent

                self._tb = SummaryWriter(str(self.path / "tensorboard"))
            except Exception:  # tensorboard missing or broken: JSONL still has everything
                self._tb = False
        return self._tb or None

    def close(self) -> None:
        if self._tb:
            self._tb.close()
