"""The two objects `PPOTrainer` is handed besides plain modules, as typing Protocols.

`runtime_checkable`: `isinstance(x, ValueHead)` checks that the members exist (not their signatures).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from ..token_attribution import Rollout
    from .experience import Experience


@runtime_checkable
class ValueHead(Protocol):
    """A value model: `[B, L]` ids and mask -> V at every position `[B, L]` (ppolab.models.ValueModel).

    `shares_trunk`: a head on the policy's own trunk (`backbone`), whose hidden states
    `values_from_hidden` `[B, T, H] -> [B, T]` reads, so one trunk pass serves both heads;
    `trainable_parameters()`: what the value optimizer steps (only the head when it shares the trunk).
    """

    shares_trunk: bool

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...


@runtime_checkable
class Recorder(Protocol):
    """Given a sample of each step's rollouts at the end of the step (ppolab.inspect.RolloutRecorder)."""

    def select(self, step: int, prompts: list[str]) -> list[int]:
        """The batch rows to record at `step` (may be empty)."""
        ...

    def record(self, step: int, rollout: Rollout, experience: Experience, new_logprobs: torch.Tensor,
               stats: dict, tokenizer, clip_eps: float, rows: list[int]) -> None:
        """Store rows `rows`; `new_logprobs` `[len(rows), T]` are theirs under the updated policy."""
        ...
