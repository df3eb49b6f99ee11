"""RolloutRecorder: appends a bounded sample of each PPO step's rollouts, token by token, to a JSONL file.

The trainer asks which rows to record (`select`: at most `per_step`), then hands it the tensors
it already has at the end of the step. One file holds the steps of several stages (`stage`
field). Per step it writes one `{"type": "step", ...}` line of batch means and one
`{"type": "rollout", ...}` line per recorded row (prompt, response, score, eos, index in the
batch), with one list per token column:

    id, text, logprob, ref_logprob, kl, value, reward, reward_kl, reward_score,
    advantage, return, new_logprob, ratio, clipped, sampler_logprob, mismatch

Columns the estimator does not compute (no value model: no `value`, `return`) are absent, never
zero; `sampler_logprob` (what the sampler drew the token with) and `mismatch` (logprob -
sampler_logprob) only when the sampler is not the policy's own path (a merged, quantised or bf16
copy, another engine). Every step is appended, flushed and fsynced; a step is never half written on disk unless
the process dies inside the write, and the reader skips such a torn last line.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..io import atomic_open
from .tokens import token_texts

# Per-step means plotted by the inspector, by the name the trainer's stats use.
STEP_MEANS = ("score_mean", "reward_mean", "kl", "kl_coef", "value_loss", "policy_loss", "clipfrac",
              "approx_kl", "entropy", "response_length", "eos_fraction", "mismatch/logprob_abs_mean",
              "mismatch/logprob_abs_max", "mismatch/k3_kl", "mismatch/ratio_outside_0.5_2")


def _number(x: float) -> float | None:
    """Seven significant digits (float32 precision, a third of repr()'s characters); None if not finite."""
    return float(f"{x:.7g}") if math.isfinite(x) else None


def read_lines(path: Path, text: str | None = None) -> list[tuple[int, dict]]:
    """(line number, record) of a rollouts file; a torn last line (killed mid-write) is skipped.

    Any other line that is not a JSON object is an error naming the file and line.
    """
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if n == len(lines):  # no newline after it: the write was cut short
                break
            raise ValueError(f"{path}:{n}: not a rollout record ({e})") from None
        records.append((n, row))
    return records


class RolloutRecorder:
    """Record `per_step` rollouts per PPO step to `path` (0 = off); `stage` labels this run's steps.

    Resuming is safe: the first step a recorder writes drops the file's lines of the same stage
    at that step or later (a killed run redoes them from its checkpoint), so no step appears twice.
    """

    def __init__(self, path: str | os.PathLike, per_step: int = 4, stage: str = "ppo"):
        if per_step < 0:
            raise ValueError(f"RolloutRecorder: per_step must be >= 0, got {per_step}")
        self.path, self.per_step, self.stage = Path(path), int(per_step), str(stage)
        self._opened = False
        self._seen: set[str] = set()  # prompts recorded at earlier steps of this stage

    def select(self, step: int, prompts: list[str]) -> list[int]:
        """The rows of step `step`'s batch to record: at most `per_step`, in batch order.

        Rows whose prompt was recorded at an earlier step come first, so the page can show one
        prompt across steps even when batches are sampled; the choice looks at prompts only, never
        at what the policy answered, so the sample stays unbiased. Then the first rows.
        """
        if self.per_step == 0:
            return []
        self._open(int(step))
        again = [i for i, p in enumerate(prompts) if p in self._seen]
        new = [i for i, p in enumerate(prompts) if p not in self._seen]
        return sorted((again + new)[: self.per_step])

    def record(self, step: int, rollout, experience, new_logprobs: torch.Tensor, stats: dict,
               tokenizer, clip_eps: float, rows: list[int]) -> None:
        """Append step `step`: its means and the rollouts of batch rows `rows` (from `select`).

        rollout: a `Rollout` (prompts, response_ids, mask, logprobs, ref_logprobs `[B, T]`, has_eos `[B]`).
        experience: the trainer's `ppolab.ppo.Experience` (kl, rewards, advantages, values, returns
        `[B, T]`, scores `[B]`).
        new_logprobs: `[k, T]` log-probs of the k = len(rows) responses under the updated policy.
        stats: the step's statistics (means and `kl_coef`, the coefficient its rewards used).
        """
        if not rows:
            return
        lines = [{"type": "step", "stage": self.stage, "step": int(step), "clip_eps": clip_eps,
                  "means": {name: _number(stats[name]) for name in STEP_MEANS
                            if isinstance(stats.get(name), (int, float))}}]
        lines += [self._rollout_line(step, i, rollout, experience, new_logprobs[j], stats, tokenizer, clip_eps)
                  for j, i in enumerate(rows)]
        self._open(int(step))
        self._seen.update(rollout.prompts[i] for i in rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def _rollout_line(self, step, i, rollout, experience, new_logprobs, stats, tokenizer, clip_eps) -> dict:
        """Row i of the batch; `new_logprobs` `[T]` is that row's, after the update."""
        n = int(rollout.mask[i].sum())
        ids = rollout.response_ids[i, :n].tolist()
        full = {"logprob": rollout.logprobs, "ref_logprob": rollout.ref_logprobs, "kl": experience.kl,
                "value": experience.values, "reward": experience.rewards,
                "advantage": experience.advantages, "return": experience.returns}
        # A quantity this estimator does not compute (no value model: no value, no return) stays absent.
        cols = {name: x[i, :n].float() for name, x in full.items() if x is not None}
        cols["new_logprob"] = new_logprobs[:n].float()
        sampler = getattr(rollout, "sampler_logprobs", None)
        if sampler is not None and sampler is not rollout.logprobs:  # else the same numbers as logprob
            cols["sampler_logprob"] = sampler[i, :n].float()
            cols["mismatch"] = cols["logprob"] - cols["sampler_logprob"]
        cols["reward_kl"] = -float(stats["kl_coef"]) * cols["kl"]  # the KL part of the reward
        cols["reward_score"] = cols["reward"] - cols["reward_kl"]  # the rest: the score at the last token
        cols["ratio"] = torch.exp(cols["new_logprob"] - cols["logprob"])
        tokens = {"id": ids, "text": token_texts(tokenizer, ids)}
        tokens.update({name: [_number(v) for v in x.tolist()] for name, x in cols.items()})
        tokens["clipped"] = [abs(r - 1.0) > clip_eps for r in cols["ratio"].tolist()]
        return {"type": "rollout", "stage": self.stage, "step": int(step), "index": i,
                "prompt": rollout.prompts[i], "response": rollout.response_texts[i],
                "score": _number(float(experience.scores[i])), "eos": bool(rollout.has_eos[i]),
                "tokens": tokens}

    def _open(self, step: int) -> None:
        """Once, before the first write: remove this stage's lines at `step` or later (a resumed run
        redoes them) and remember the prompts recorded before."""
        if self._opened:
            return
        self._opened = True
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        records = [r for _, r in read_lines(self.path, text)]
        keep = [r for r in records if not (r.get("stage") == self.stage and int(r.get("step", 0)) >= step)]
        self._seen = {r["prompt"] for r in keep if r.get("stage") == self.stage and "prompt" in r}
        torn = bool(text) and not text.endswith("\n")  # appending to a torn line would corrupt the next
        if len(keep) != len(records) or torn:
            with atomic_open(self.path) as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
