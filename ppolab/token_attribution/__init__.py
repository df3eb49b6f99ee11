"""Sequence generation and state-action extraction: prompts in, a `Rollout` of tensors out."""
from .generator import SequenceGenerator, response_mask
from .logprobs import logprobs_and_values, response_logprobs
from .rollout import Rollout, StateAction

__all__ = ["Rollout", "SequenceGenerator", "StateAction", "logprobs_and_values", "response_logprobs", "response_mask"]
