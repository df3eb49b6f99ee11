"""Sequence generation and state-action extraction: prompts in, a `Rollout` of tensors out."""
from .generator import SequenceGenerator, response_logprobs, response_mask
from .rollout import Rollout, StateAction

__all__ = ["Rollout", "SequenceGenerator", "StateAction", "response_logprobs", "response_mask"]
