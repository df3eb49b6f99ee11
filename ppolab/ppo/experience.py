"""What `PPOTrainer.make_experience` hands to `update`: one typed batch of scored rollouts.

B rollouts, P prompt columns (left-padded), T response columns (right-padded; `mask` marks the
real tokens, up to and including EOS).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Experience:
    """A batch of scored rollouts with everything the PPO epochs and the logs read, per row.

    input_ids        [B, P+T]  prompt then response ids: what every model scores in one forward
    attention_mask   [B, P+T]
    mask             [B, T]    1 on response tokens (up to and including EOS)
    logprobs         [B, T]    the trainer's (old policy's) log-probs: what the PPO ratio divides by
    ref_logprobs     [B, T]    the reference model's log-probs
    values           [B, T]    V(s_t) of the value model (zeros for the critic-free estimators)
    advantages       [B, T]
    returns          [B, T]    value targets (critic-free: the rewards-to-go, logged only)
    scores           [B]       the reward's score of each response
    kl               [B, T]    per-token KL estimate (`PPOConfig.kl_estimator`) of policy vs reference
    rewards          [B, T]    the KL-penalised token rewards the advantages were computed from
    sampler_logprobs [B, T] | None   the sampler's own log-probs (for rollout correction), if known
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.mask.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """`name -> tensor` of the fields that are set (None fields left out), in field order."""
        return {f.name: t for f in dataclasses.fields(self) if (t := getattr(self, f.name)) is not None}

    def select(self, idx: torch.Tensor | slice) -> Experience:
        """The rows `idx` (index tensor `[k]` or a slice) of every field, as an Experience of k rows."""
        if isinstance(idx, torch.Tensor):
            return type(self)(**{k: t[idx.to(t.device)] for k, t in self.tensors().items()})
        return type(self)(**{k: t[idx] for k, t in self.tensors().items()})
