"""A batch of sampled responses with everything PPO needs per token, as tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StateAction:
    """One step of one sequence, for reading: state s_t (prompt + tokens so far) and action a_t."""

    t: int
    state_text: str
    action_token: str
    action_id: int
    logprob: float  # log pi(a_t | s_t) at the sampling temperature
    ref_logprob: float  # log pi_ref(a_t | s_t)
    kl: float  # k1 term logprob - ref_logprob
    value: float  # V(s_t)


@dataclass
class Rollout:
    """State-action pairs of B sequences as `[B, T]` tensors (T = longest response).

    prompt_ids `[B, P]` left-padded, prompt_mask `[B, P]`; response_ids `[B, T]`, right-padded
    with pad after EOS; mask `[B, T]` 1 up to and including EOS; logprobs, ref_logprobs, values
    `[B, T]`; has_eos `[B]` bool; sampler_logprobs `[B, T]` or None: the sampler's own log-probs of
    the tokens it drew (the same tensor as `logprobs` when the sampler is the policy's own fp32
    path; else a merged/quantised/bf16 copy's or another engine's, for rollout correction;
    `logprobs` are what the PPO ratio uses). Row b's action t is response_ids[b, t]; its state is the prompt
    followed by response_ids[b, :t].
    """

    prompts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    has_eos: torch.Tensor
    response_texts: list[str]
    sampler_logprobs: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        """`[B, P + T]` prompt followed by response: what every model scores in one forward."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.mask.to(self.prompt_mask.dtype)], dim=1)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def state_actions(self, i: int, tokenizer) -> list[StateAction]:
        """The state-action view of sequence i, read from the stored tensors (no recomputation)."""
        prompt = self.prompt_ids[i][self.prompt_mask[i].bool()].tolist()
        n = int(self.mask[i].sum())
        resp = self.response_ids[i, :n].tolist()
        steps = []
        for t in range(n):
            lp, ref = float(self.logprobs[i, t]), float(self.ref_logprobs[i, t])
            steps.append(StateAction(
                t=t,
                state_text=tokenizer.decode(prompt + resp[:t]),
                action_token=tokenizer.decode([resp[t]]),
                action_id=resp[t],
                logprob=lp, ref_logprob=ref, kl=lp - ref,
                value=float(self.values[i, t]),
            ))
        return steps
