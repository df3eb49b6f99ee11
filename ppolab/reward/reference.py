"""Rewards that need no reward model: a response scored against its prompt's reference translation.

`ReferenceChrF` is a `PPOTrainer` reward callable `(prompts, responses) -> [B]`: the sentence chrF
of each response against the reference of its prompt, normalised like a reward model (mean 0,
std 1 on a sample of the starting policy's responses, `fit`). `MixedReward` adds weighted reward
callables, e.g. the Bradley-Terry model's score plus this metric, so PPO follows the learned
preference while a signal it cannot fool (the reference) anchors it.

A reward that reads the reference exists only for prompts with a reference (the training split):
an unknown prompt is an error, never a silent zero.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..metrics import sentence_chrf

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]

__all__ = ["MixedReward", "ReferenceChrF"]


class ReferenceChrF:
    """Sentence chrF (0-100) against the prompt's reference, as `(chrF - center) / scale`.

    `references`: {prompt text: reference translation}, the prompts exactly as PPO passes them.
    """

    def __init__(self, references: Mapping[str, str], center: float = 0.0, scale: float = 1.0):
        if not references:
            raise ValueError("ReferenceChrF: references is empty")
        if not scale > 0:
            raise ValueError(f"ReferenceChrF: scale must be > 0, got {scale}")
        self.references, self.center, self.scale = dict(references), float(center), float(scale)

    def chrf(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Raw sentence chrF of each response, 0-100."""
        if len(prompts) != len(responses):
            raise ValueError(f"ReferenceChrF: {len(prompts)} prompts but {len(responses)} responses")
        refs = []
        for i, p in enumerate(prompts):
            if p not in self.references:
                raise KeyError(f"ReferenceChrF: prompts[{i}] has no reference (its last 80 characters: {p[-80:]!r})")
            refs.append(self.references[p])
        return sentence_chrf([r.strip() for r in responses], refs)

    def fit(self, prompts: Sequence[str], responses: Sequence[str]) -> "ReferenceChrF":
        """Set center/scale to the mean/std of the chrF of these responses (as RM normalisation)."""
        raw = torch.tensor(self.chrf(prompts, responses), dtype=torch.float64)
        if raw.numel() < 2:
            raise ValueError("ReferenceChrF.fit: need at least 2 responses")
        self.center, self.scale = float(raw.mean()), max(float(raw.std()), 1e-3)
        return self

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """`[B]` float32 normalised scores."""
        raw = torch.tensor(self.chrf(prompts, responses), dtype=torch.float32)
        return (raw - self.center) / self.scale


class MixedReward:
    """`sum_i weight_i * reward_i(prompts, responses)`; `last_parts` keeps each part's `[B]` scores
    of the latest call (weighted), for logging."""

    def __init__(self, parts: Mapping[str, tuple[RewardFn, float]]):
        if not parts:
            raise ValueError("MixedReward: no parts")
        self.parts = dict(parts)
        self.last_parts: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        total = None
        for name, (fn, weight) in self.parts.items():
            s = weight * torch.as_tensor(fn(list(prompts), list(responses)), dtype=torch.float32).reshape(-1).cpu()
            self.last_parts[name] = s
            total = s if total is None else total + s
        return total
