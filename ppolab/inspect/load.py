"""Read `rollouts.jsonl` back: the records as dicts (for the page) or as tensors per step (for a notebook)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .recorder import read_lines

# Token columns that are not numbers: ids become a long tensor, text stays a list, clipped a bool tensor.
_NON_FLOAT = ("id", "text", "clipped")


@dataclass
class StepRollouts:
    """The recorded rollouts of one PPO step, k of them, padded to the longest (T tokens).

    `tokens[name]` is a `[k, T]` float tensor per recorded quantity (`logprob`, `ref_logprob`,
    `kl`, `reward`, `reward_kl`, `reward_score`, `advantage`, `new_logprob`, `ratio`, and
    `value`, `return` when the run had a value model); `ids` `[k, T]` long; `clipped` and `mask`
    `[k, T]` bool; `scores` `[k]`; `eos` `[k]` bool; `texts[i]` the token strings of row i.
    Padding is 0 (False); a value that was not finite is NaN. `means`: the batch means of the step.
    """

    stage: str
    step: int
    prompts: list[str]
    responses: list[str]
    scores: torch.Tensor
    eos: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor
    clipped: torch.Tensor
    texts: list[list[str]]
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    clip_eps: float | None = None


def read_records(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(step lines, rollout lines) of a rollouts file, ordered by stage (first seen), step and index.

    When a (stage, step, index) appears more than once the last line wins, so even a file written
    by an older, interrupted run never shows a step twice.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such rollouts file (is recording on? PPO writes it per step)")
    steps: dict[tuple, dict] = {}
    rollouts: dict[tuple, dict] = {}
    stage_order: dict[str, int] = {}
    for n, row in read_lines(path):
        if row.get("type") == "rollout":
            _check_rollout(row, f"{path}:{n}")
        stage, step = str(row.get("stage", "ppo")), int(row.get("step", 0))
        stage_order.setdefault(stage, len(stage_order))
        if row.get("type") == "step":
            steps[(stage, step)] = row
        elif row.get("type") == "rollout":
            rollouts[(stage, step, int(row.get("index", 0)))] = row
    order = lambda key: (stage_order[key[0]], *key[1:])  # noqa: E731
    return [steps[k] for k in sorted(steps, key=order)], [rollouts[k] for k in sorted(rollouts, key=order)]


def _check_rollout(row: dict, where: str) -> None:
    """One clear error for a rollout line the page and the tensors could not use."""
    for key in ("prompt", "score", "eos", "tokens"):
        if key not in row:
            raise ValueError(f"{where}: rollout record has no {key!r}")
    tokens = row["tokens"]
    if not isinstance(tokens, dict) or not isinstance(tokens.get("id"), list) or not isinstance(tokens.get("text"), list):
        raise ValueError(f"{where}: 'tokens' must hold lists 'id' and 'text'")
    n = len(tokens["id"])
    for name, col in tokens.items():
        if not isinstance(col, list) or len(col) != n:
            raise ValueError(f"{where}: token column {name!r} has {len(col) if isinstance(col, list) else 'no'} "
                             f"entries for {n} tokens")


def _padded(rows: list[list], dtype: torch.dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), width, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor([float("nan") if v is None else v for v in r], dtype=dtype)
    return out


def load_rollouts(path: str | os.PathLike) -> list[StepRollouts]:
    """The recorded steps of a `rollouts.jsonl` (or of the one in a run directory), in order."""
    path = Path(path)
    if path.is_dir():
        path = path / "rollouts.jsonl"
    step_lines, rollout_lines = read_records(path)
    means = {(s["stage"], s["step"]): s for s in step_lines}
    grouped: dict[tuple, list[dict]] = {}
    for r in rollout_lines:
        grouped.setdefault((r["stage"], r["step"]), []).append(r)
    out = []
    for (stage, step), rows in grouped.items():
        toks = [r["tokens"] for r in rows]
        # A column is kept when every row has it: an estimator either computes a quantity or not.
        names = [n for n in toks[0] if n not in _NON_FLOAT and all(n in t for t in toks)]
        info = means.get((stage, step), {})
        out.append(StepRollouts(
            stage=stage, step=step,
            prompts=[r["prompt"] for r in rows], responses=[r.get("response", "") for r in rows],
            scores=torch.tensor([r["score"] for r in rows], dtype=torch.float32),
            eos=torch.tensor([bool(r["eos"]) for r in rows]),
            mask=_padded([[1] * len(t["id"]) for t in toks], torch.long).bool(),
            ids=_padded([t["id"] for t in toks], torch.long),
            clipped=_padded([t.get("clipped", []) for t in toks], torch.long).bool(),
            texts=[t["text"] for t in toks],
            tokens={n: _padded([t[n] for t in toks], torch.float32) for n in names},
            means=dict(info.get("means", {})), clip_eps=info.get("clip_eps"),
        ))
    return out
