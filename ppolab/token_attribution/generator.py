"""SequenceGenerator: sample responses with the KV cache, then score every token in one forward per model."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GenerationConfig
from ..models.builders import position_ids_from_mask
from .rollout import Rollout


def response_mask(response_ids: torch.Tensor, eos_token_id) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, T]` mask, 1 up to and including the first EOS, and has_eos `[B]`.

    `eos_token_id`: one id, a list/tensor of stop ids (any of them ends a response), or None.
    """
    B, T = response_ids.shape
    if eos_token_id is None:
        return torch.ones(B, T, dtype=torch.long, device=response_ids.device), torch.zeros(B, dtype=torch.bool)
    is_eos = torch.isin(response_ids, torch.as_tensor(eos_token_id, device=response_ids.device).reshape(-1))
    # Tokens strictly after the first EOS: the running count of EOS seen before this position is > 0.
    eos_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~eos_before).long(), is_eos.any(-1)


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_response: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """Log-probs `[B, T]` of the last `n_response` tokens of `input_ids` `[B, P + T]`, in one forward.

    Logits are divided by the sampling temperature first, so these are the log-probs of the
    distribution the tokens were drawn from (before top-k/top-p truncation, as in TRL).
    With `with_entropy`, also returns the per-token entropy `[B, T]` of that distribution.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=n_response + 1,  # the LM head runs on response positions only
    )
    # Slice here too: a model that ignores `logits_to_keep` returns every position, and reading
    # those from the left would score prompt positions without any error.
    logits = out.logits[:, -n_response - 1 : -1].float() / temperature  # position t-1 predicts token t
    logp_all = F.log_softmax(logits, dim=-1)
    targets = input_ids[:, -n_response:]
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logprobs
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def sample_next_token(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """`[B]` tokens drawn from `[B, V]` logits at `temperature`, optionally truncated by top-k / top-p."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (keep the first).
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


@contextmanager
def timed(timings: dict, name: str):
    """Add the wall time of the block to timings[name] (syncing CUDA so the time is real)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def _lm_head_dtype(model: nn.Module, logits: torch.Tensor) -> torch.dtype:
    """The dtype the logits are computed in (a model may upcast its output logits to fp32)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else logits.dtype


def kv_cache_kwargs(out) -> dict:
    """The keyword that feeds a forward's KV cache into the next one.

    transformers 5 renamed `past_key_values` to `cache` (5.2x); read whichever the output has.
    """
    if hasattr(out, "cache"):
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


class SequenceGenerator:
    """Turns prompts into a `Rollout`.

    Prompts are left-padded (position ids start at each row's first real token); sampling uses
    the KV cache and stops at EOS; everything after EOS becomes padding; then the policy,
    reference and value model each score the whole batch in one forward pass.
    """

    def __init__(self, policy, tokenizer, config: GenerationConfig, reference=None, value_model=None):
        self.policy, self.tokenizer, self.config = policy, tokenizer, config.validate()
        self.reference, self.value_model = reference, value_model
        self.timings: dict[str, float] = {}  # seconds per phase of the last generate()
        if tokenizer.pad_token_id is None:
            raise ValueError("SequenceGenerator: the tokenizer has no pad token")
        if tokenizer.padding_side != "left":
            tokenizer.padding_side = "left"  # generation appends on the right
        self.stop_ids = None  # ids that end a response: EOS, and newline tokens with stop_at_newline
        if self.config.stop_at_eos:
            from ..models.tokenizer import newline_token_ids

            newline = newline_token_ids(tokenizer) if self.config.stop_at_newline else []
            self.stop_ids = torch.tensor([tokenizer.eos_token_id, *newline], dtype=torch.long)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded `[B, P]` ids and mask; empty or over-long prompts are errors, not truncations."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts: expected a non-empty list of strings")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompts[{i}]: empty prompt")
        enc = self.tokenizer(list(prompts), add_special_tokens=False)
        for i, ids in enumerate(enc["input_ids"]):
            if len(ids) > self.config.max_prompt_length:
                raise ValueError(
                    f"prompts[{i}]: {len(ids)} tokens exceeds GenerationConfig.max_prompt_length="
                    f"{self.config.max_prompt_length}"
                )
        padded = self.tokenizer.pad(enc, return_tensors="pt", padding=True)
        device = next(self.policy.parameters()).device
        return padded["input_ids"].to(device), padded["attention_mask"].to(device)

    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, T]` sampled response ids, and their log-probs `[B, T]` (or None): a decoding loop over the KV cache.

        Written out instead of calling `generate()`: at RLHF batch sizes on small models the
        per-token bookkeeping of `generate()` costs as much as the model itself. Rows that have
        emitted EOS keep sampling junk that `score()` masks; the loop stops once every row is done.
        The log-probs come from the logits each token was drawn from (see
        `GenerationConfig.logprobs_from_sampling`); None when they are to be recomputed.
        """
        c = self.config
        stop = self.stop_ids.to(prompt_ids.device) if self.stop_ids is not None else None
        mask = prompt_mask.clone()
        positions = position_ids_from_mask(mask)
        out = self.policy(input_ids=prompt_ids, attention_mask=mask, position_ids=positions,
                          use_cache=True, logits_to_keep=1)
        keep_logprobs = c.logprobs_from_sampling
        if keep_logprobs is None:
            keep_logprobs = _lm_head_dtype(self.policy, out.logits) == torch.float32
        next_pos = positions[:, -1:] + 1
        finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        tokens, logprobs = [], []
        for _ in range(c.max_new_tokens):
            logits = out.logits[:, -1]
            token = sample_next_token(logits, c.temperature, c.top_k, c.top_p)
            tokens.append(token)
            if keep_logprobs:  # of the untruncated distribution at the temperature, as when recomputed
                logp = F.log_softmax(logits.float() / c.temperature, dim=-1)
                logprobs.append(logp.gather(-1, token[:, None]).squeeze(-1))
            if stop is not None:
                finished |= torch.isin(token, stop)
                if bool(finished.all()):
                    break
            if len(tokens) == c.max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = self.policy(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                              use_cache=True, **kv_cache_kwargs(out))
            next_pos = next_pos + 1
        return torch.stack(tokens, dim=1), (torch.stack(logprobs, dim=1) if keep_logprobs else None)

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> Rollout:
        self.timings = {}
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        was_training = self.policy.training
        self.policy.eval()
        try:
            with timed(self.timings, "generate"):
                response, logprobs = self.sample(prompt_ids, prompt_mask)
            return self.score(list(prompts), prompt_ids, prompt_mask, response, logprobs)
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def score(self, prompts, prompt_ids, prompt_mask, response, logprobs=None) -> Rollout:
        """Build the Rollout of given responses `[B, T]`: mask after EOS, then one forward per model.

        `logprobs` `[B, T]`: the policy's log-probs of `response` if already known (from sampling);
        else the policy scores the responses in one forward too.
        """
        mask, has_eos = response_mask(response, self.stop_ids)
        T = max(int(mask.sum(-1).max()), 1)  # drop columns that are padding in every row
        response = response[:, :T].masked_fill(mask[:, :T] == 0, self.tokenizer.pad_token_id)
        mask = mask[:, :T]
        input_ids = torch.cat([prompt_ids, response], 1)
        attention_mask = torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], 1)
        temp = self.config.temperature
        if logprobs is not None:
            logprobs = logprobs[:, :T].float().masked_fill(mask == 0, 0.0)
        else:
            with timed(self.timings, "policy_forward"):
                logprobs = response_logprobs(self.policy, input_ids, attention_mask, T, temp)
        ref = self.reference if self.reference is not None else self.policy
        with timed(self.timings, "ref_forward"):
            ref_logprobs = response_logprobs(ref, input_ids, attention_mask, T, temp)
        with timed(self.timings, "value_forward"):
            if self.value_model is not None:
                values = self.value_model(input_ids, attention_mask)[:, -T - 1 : -1]  # V(s_t) sits before a_t
            else:
                values = torch.zeros_like(logprobs)
        texts = self.tokenizer.batch_decode(response.masked_fill(response == self.tokenizer.eos_token_id,
                                                                 self.tokenizer.pad_token_id),
                                            skip_special_tokens=True)
        if self.config.stop_at_newline:  # the stop token may carry text before its newline (".\n")
            texts = [t.split("\n", 1)[0] for t in texts]
        return Rollout(prompts, prompt_ids, prompt_mask, response, mask, logprobs, ref_logprobs,
                       values.float(), has_eos.to(response.device), texts)
