"""SequenceGenerator: sample responses with the KV cache, then score every token in one forward per model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GenerationConfig
from ..models.builders import Reference, base_trunk, is_peft, position_ids_from_mask
from ..models.merged import merged_copy, refresh_merged
from .logprobs import fuses_with, logprob_head, logprobs_and_values, response_logprobs
from .rollout import Rollout
from .sampling import sample_next_token
from ..timing import timed  # (ppolab.token_attribution.generator.timed stays importable)


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


def _lm_head_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the logits are computed in: the head's weights (a trimmed head's rows), else the model's."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", getattr(head, "rows", None))
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


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
        # Never the policy itself (the KL would be 0 by construction): as in PPOTrainer, None means
        # Reference(policy), the adapter-disabled base of a LoRA policy or a frozen copy.
        self.reference = reference if reference is not None else Reference(policy)
        self.value_model = value_model
        self.timings: dict[str, float] = {}  # seconds per phase of the last generate()
        # What samples: the policy, a merged copy of its LoRA adapter, or a quantised copy (LoRA merged
        # in), refreshed every generate().
        self.sampler, self._refresh_sampler = policy, None
        if self.config.sampler_quantization is not None:
            from ..models.quantized_sampler import quantized_sampling_copy, refresh_quantized

            self.sampler = quantized_sampling_copy(policy, self.config.sampler_quantization)
            self._refresh_sampler = refresh_quantized
        elif self.config.merged_lora_sampling or (self.config.engine == "static" and is_peft(policy)):
            # the static engine captures plain weights
            self.sampler, self._refresh_sampler = merged_copy(policy), refresh_merged
        if tokenizer.pad_token_id is None:
            raise ValueError("SequenceGenerator: the tokenizer has no pad token")
        if tokenizer.padding_side != "left":
            tokenizer.padding_side = "left"  # generation appends on the right
        self.stop_ids = None  # ids that end a response: EOS, and newline tokens with stop_at_newline
        if self.config.stop_at_eos:
            from ..models.tokenizer import stop_token_ids

            self.stop_ids = torch.tensor(stop_token_ids(tokenizer, self.config.stop_at_newline), dtype=torch.long)

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

    def logprobs_from_sampling(self) -> bool:
        """Whether the rollout's `logprobs` (PPO's ratio base) are taken from the sampling loop.

        `GenerationConfig.logprobs_from_sampling` when set; by default only when the sampler is the
        policy's own fp32 eager path, where the two agree to ~1e-6. Any other sampler (a merged LoRA
        or int8 copy, bf16, another engine) computes differently, so the policy recomputes them and
        the sampler's own stay in `Rollout.sampler_logprobs` (the mismatch, `rollout_correction`).
        """
        c = self.config
        if c.logprobs_from_sampling is not None:
            return c.logprobs_from_sampling
        engine = getattr(c, "engine", "eager")  # GenerationConfig.engine of the static engine, when there
        return self.sampler is self.policy and engine == "eager" and _lm_head_dtype(self.policy) == torch.float32

    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """`[B, T]` sampled response ids, the sampler's log-probs `[B, T]` and values `[B, T]` (or
        None): a decoding loop over the KV cache.

        Written out instead of calling `generate()`: at RLHF batch sizes on small models the
        per-token bookkeeping of `generate()` costs as much as the model itself. Rows that have
        emitted EOS keep sampling junk that `score()` masks; the loop stops once every row is done.
        The log-probs, always, are those of each token under the temperature-scaled, untruncated
        distribution of the logits it was drawn from (the trainer's definition). With a value head
        on the policy's trunk (`fuses_with`) and the log-probs taken from sampling
        (`logprobs_from_sampling`), the loop runs the trunk and both heads itself, and V(s_t) comes
        from the hidden state token t is drawn from: no value pass after; else values are None.
        A vocabulary-trimmed head (`TrimmedLMHead`, no softcap) is sampled on its kept columns.
        """
        c = self.config
        stop = self.stop_ids.to(prompt_ids.device) if self.stop_ids is not None else None
        # Values from the cached decode only alongside its log-probs: where those are recomputed, the
        # values come from that same full forward of the policy instead.
        fused = (self.value_model is not None and fuses_with(self.policy, self.value_model)
                 and self.logprobs_from_sampling())
        model = self.sampler
        split = logprob_head(model)  # (head, kept ids or None, V), or None: the model's own forward
        keep_ids = split[1] if split is not None else None
        if fused or keep_ids is not None:
            # The sampler's forward split at its last hidden state, as the model computes it: for
            # the value head (on the sampler's trunk: the policy's, or the merged copy's), and for a
            # trimmed head read on its kept columns only (the others have probability exactly 0, so
            # sampling among the K kept tokens is the same distribution without V-wide arithmetic).
            trunk, head, value = base_trunk(model), split[0], self.value_model

            def forward(**kw):
                out = trunk(**kw)
                h = out.last_hidden_state[:, -1:]
                return head(h)[:, -1], value.values_from_hidden(h)[:, -1] if fused else None, out
        else:
            def forward(**kw):
                out = model(**kw, logits_to_keep=1)
                return out.logits[:, -1], None, out

        if c.engine == "static":  # the same model call, over a preallocated cache (static_cache.py)
            from .static_cache import static_sample
            return static_sample(self, forward, prompt_ids, prompt_mask, keep_ids, stop, fused)
        mask = prompt_mask.clone()
        positions = position_ids_from_mask(mask)
        logits, v, out = forward(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        next_pos = positions[:, -1:] + 1
        finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        tokens, logprobs, values = [], [], []
        for _ in range(c.max_new_tokens):
            column = sample_next_token(logits, c.temperature, c.top_k, c.top_p)
            token = keep_ids[column] if keep_ids is not None else column  # the column's vocabulary id
            tokens.append(token)
            values.append(v)
            # Of the untruncated distribution at the temperature, as when recomputed.
            logp = F.log_softmax(logits.float() / c.temperature, dim=-1)
            logprobs.append(logp.gather(-1, column[:, None]).squeeze(-1))
            if stop is not None:
                finished |= torch.isin(token, stop)
                if bool(finished.all()):
                    break
            if len(tokens) == c.max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            logits, v, out = forward(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                                     use_cache=True, **kv_cache_kwargs(out))
            next_pos = next_pos + 1
        return (torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1),
                torch.stack(values, dim=1) if fused else None)

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> Rollout:
        self.timings = {}
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        was_training = self.policy.training
        self.policy.eval()
        if self._refresh_sampler is not None:
            with timed(self.timings, "merge"):
                self._refresh_sampler(self.sampler, self.policy)  # the weights as the last update left them
        try:
            with timed(self.timings, "generate"):
                response, sampler_logprobs, values = self.sample(prompt_ids, prompt_mask)
            logprobs = sampler_logprobs if self.logprobs_from_sampling() else None  # else recomputed
            return self.score(list(prompts), prompt_ids, prompt_mask, response, logprobs, values,
                              sampler_logprobs=sampler_logprobs)
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def score(self, prompts, prompt_ids, prompt_mask, response, logprobs=None, values=None,
              sampler_logprobs=None) -> Rollout:
        """Build the Rollout of given responses `[B, T]`: mask after EOS, then one forward per model.

        `logprobs` `[B, T]`: the policy's log-probs of `response` if already known (from sampling);
        else the policy scores the responses in one forward too. `values` `[B, T]` likewise (from
        sampling with a value head on the policy's trunk); else the value model scores them, in the
        policy's forward when it shares its trunk and that forward runs, else in one of its own.
        `sampler_logprobs` `[B, T]`: the sampler's own (kept in the Rollout, masked like `logprobs`).
        """
        mask, has_eos = response_mask(response, self.stop_ids)
        T = max(int(mask.sum(-1).max()), 1)  # drop columns that are padding in every row
        response = response[:, :T].masked_fill(mask[:, :T] == 0, self.tokenizer.pad_token_id)
        mask = mask[:, :T]
        input_ids = torch.cat([prompt_ids, response], 1)
        attention_mask = torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], 1)
        temp = self.config.temperature
        if values is not None:
            values = values[:, :T]
        elif self.value_model is None:
            values = torch.zeros(mask.shape, device=mask.device)
        same = sampler_logprobs is logprobs  # taken from sampling: one tensor for both
        if sampler_logprobs is not None:
            sampler_logprobs = sampler_logprobs[:, :T].float().masked_fill(mask == 0, 0.0)
        if logprobs is not None:
            logprobs = sampler_logprobs if same else logprobs[:, :T].float().masked_fill(mask == 0, 0.0)
        elif values is None and fuses_with(self.policy, self.value_model):
            with timed(self.timings, "policy_value_forward"):  # one trunk pass for both
                logprobs, values = logprobs_and_values(self.policy, self.value_model, input_ids, attention_mask,
                                                       T, temp)
        else:
            with timed(self.timings, "policy_forward"):
                logprobs = response_logprobs(self.policy, input_ids, attention_mask, T, temp)
        with timed(self.timings, "ref_forward"):
            ref_logprobs = response_logprobs(self.reference, input_ids, attention_mask, T, temp)
        if values is None:
            with timed(self.timings, "value_forward"):
                values = self.value_model(input_ids, attention_mask)[:, -T - 1 : -1]  # V(s_t) sits before a_t
        texts = self.tokenizer.batch_decode(response.masked_fill(response == self.tokenizer.eos_token_id,
                                                                 self.tokenizer.pad_token_id),
                                            skip_special_tokens=True)
        if self.config.stop_at_newline:  # the stop token may carry text before its newline (".\n")
            texts = [t.split("\n", 1)[0] for t in texts]
        return Rollout(prompts, prompt_ids, prompt_mask, response, mask, logprobs, ref_logprobs,
                       values.float(), has_eos.to(response.device), texts, sampler_logprobs)
