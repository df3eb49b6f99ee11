"""PPOTrainer.ppo_step: one PPO update of a language model, composed from ppolab's pure pieces.

    prompts ─SequenceGenerator→ Rollout ─reward→ scores[B] ─per_token_kl, kl_penalized_rewards→ rewards[B,T]
            ─gae (+ masked_whiten)→ advantages, returns ─ExperienceBuffer→ minibatches × epochs
            ─minibatch_loss (clipped_policy_loss + clipped_value_loss)→ optimizer steps → stats

Stages hand each other typed batches: `Rollout` (token_attribution/rollout.py), then `Experience`
(ppo/experience.py), whose row selections the `ExperienceBuffer` serves as micro-batches.

Critic-free estimators (`PPOConfig.advantage_estimator`: GRPO, Dr. GRPO, RLOO, REINFORCE++) change
only the advantage arrow (see `estimate_advantages`) and drop the value model and its loss.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
from torch import nn

from .. import distributed as dist
from ..advantage import (
    expand_to_tokens, gae, group_advantages, masked_mean, rewards_to_go, rloo_advantages,
)
from ..advantage.aggregate import aggregate_loss, aggregation_units
from ..config import GenerationConfig, PPOConfig
from ..experience_buffer import ExperienceBuffer
from ..models import Reference, RewardModel, base_trunk, disable_dropout
from ..models.builders import position_ids_from_mask
from ..reward_kl import AdaptiveKLController, FixedKLController, kl_loss, kl_penalized_rewards, per_token_kl
from ..token_attribution import Rollout, SequenceGenerator, logprobs_and_values, response_logprobs
from ..token_attribution.generator import timed
from .experience import Experience
from .losses import clipped_policy_loss, clipped_value_loss
from .rollout_correction import mismatch_stats, rollout_correction_weights
from .protocols import Recorder, ValueHead

RewardFn = Callable[[list[str], list[str]], "torch.Tensor | list[float]"]
# (model, input_ids [B, P+T], attention_mask [B, P+T], n_response T, temperature, with_entropy=False)
#   -> logprobs [B, T], or (logprobs, entropy) [B, T] each with with_entropy
LogprobFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def minibatch_loss(
    policy: nn.Module, value: ValueHead | None, mb: Experience, config: PPOConfig, *, n_response: int,
    temperature: float, policy_weight: float, token_weight: float, logprob_fn: LogprobFn = response_logprobs,
    norm_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO loss of one micro-batch `mb` (rows `[b, P+T]`), weighted by its share of the minibatch.

    policy_weight: its share of what the policy loss averages over (tokens for token-mean, rows for
    the seq-mean modes); token_weight: its share of the tokens (the value loss, token statistics).
    Returns (loss, stats): the weighted sum of the micro-batches' losses is the minibatch's loss,
    and the stats (floats) are pre-weighted the same way, so their sums are the minibatch's means.
    norm_length: the fixed L of "seq-mean-token-sum-norm".
    """
    c, mask = config, mb.mask
    agg = {"aggregation": c.loss_aggregation, "norm_length": norm_length}
    logprobs, entropy, vpred = _forward(policy, value, mb, n_response, temperature, logprob_fn)
    weights, correction_stats = None, {}
    if c.rollout_correction != "none" and mb.sampler_logprobs is not None:  # the sampler-trainer mismatch
        weights, correction_stats = rollout_correction_weights(
            mb.logprobs, mb.sampler_logprobs, mask, c.rollout_correction, c.rollout_correction_cap,
            c.rollout_correction_level)
    pg_loss, pg_stats = clipped_policy_loss(logprobs, mb.logprobs, mb.advantages, mask, c.clip_eps,
                                            clip_eps_high=c.clip_eps_high, dual_clip=c.dual_clip, **agg,
                                            weights=weights)
    if c.entropy_coef == 0:  # logged only: keep it out of the backward pass
        entropy = entropy.detach()
    policy_loss = pg_loss - c.entropy_coef * aggregate_loss(entropy, mask, c.loss_aggregation, norm_length)
    by_policy_weight = {"policy_loss": pg_loss}
    if c.kl_in == "loss":
        kl = kl_loss(logprobs, mb.ref_logprobs, mask, c.kl_loss_estimator, **agg)
        policy_loss = policy_loss + c.kl_loss_coef * kl
        by_policy_weight["kl_loss"] = kl
    loss = policy_loss * policy_weight
    by_token_weight = {"entropy": masked_mean(entropy, mask), **pg_stats, **correction_stats}
    if value is not None:  # the value loss stays a token mean in every mode
        vf_loss, vf_stats = clipped_value_loss(vpred, mb.values, mb.returns, mask, c.value_clip_eps)
        loss = loss + c.vf_coef * vf_loss * token_weight
        by_token_weight.update(value_loss=vf_loss, **vf_stats)
    stats = {k: w * float(v.detach())
             for w, values in ((policy_weight, by_policy_weight), (token_weight, by_token_weight))
             for k, v in values.items()}
    return loss, stats


def _forward(policy, value, mb: Experience, n_response: int, temperature: float, logprob_fn: LogprobFn):
    """(logprobs, entropy, values or None), each `[b, T]`, of the micro-batch under the current models."""
    args = (mb.input_ids, mb.attention_mask, n_response, temperature)
    if value is None:
        return (*logprob_fn(policy, *args, with_entropy=True), None)
    if logprob_fn is response_logprobs:
        # One trunk pass for both heads when the value head sits on the policy's trunk.
        return logprobs_and_values(policy, value, *args, with_entropy=True)
    # A given log-prob function scores the policy on its own; the value model runs its own forward.
    values = value(mb.input_ids, mb.attention_mask)[:, -n_response - 1 : -1]  # V(s_t) sits before a_t
    return (*logprob_fn(policy, *args, with_entropy=True), values)


@torch.no_grad()
def sequence_classifier_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`[B]` scores of a Hugging Face sequence-classification model at each row's last valid token.

    Not through its own pooling: transformers picks the last non-pad *id*, which is the token
    before EOS when pad == eos. The trunk runs once and the `score` head is read at the last
    position the attention mask marks (rows are `[left-padded prompt, response, right padding]`).
    """
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"reward: {type(model).__name__} has no `score` head; wrap it in ppolab.models.RewardModel")
    hidden = base_trunk(model)(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(-1)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return head(picked).float()[:, 0]


class PPOTrainer:
    """Owns the optimizers and the KL controller; `ppo_step(prompts)` does one full PPO update.

    `reward` is a `RewardModel` (scored on the text prompt + response + EOS, as it was trained
    and normalised), a Hugging Face sequence-classification model (same tokenizer), or
    any callable `(prompts, responses) -> scores [B]` such as a translation metric.

    Under `torchrun` (process group initialised before construction, N > 1 ranks) the trainer is
    data-parallel: `PPOConfig.batch_size` and `minibatch_size` are global, each rank passes its
    own `batch_size / N` prompts, and a step equals one process's step on all ranks' rollouts
    (see `ppolab.distributed`). Models are broadcast from rank 0; sampling is seeded `seed + rank`.

    `value` is None exactly when the advantage estimator is critic-free (all but "gae"): then no
    value forward, value loss or value optimizer runs. With `group_size` G > 1, `ppo_step` takes
    `batch_size / G` prompts (per rank) and samples each G times, in consecutive rows.

    `logprob_fn` (default `response_logprobs`) scores the policy in the update and the recorder's
    pass; `state_dict()` / `load_state_dict()` checkpoint everything but the models' weights.
    """

    def __init__(
        self,
        config: PPOConfig,
        policy: nn.Module,
        ref: nn.Module | None,  # None: `Reference(policy)` (adapter-disabled base for LoRA, else a frozen copy)
        value: ValueHead | None,  # None exactly for the critic-free estimators
        reward: nn.Module | RewardFn,
        tokenizer,
        generation: GenerationConfig | None = None,
        recorder: Recorder | None = None,
        logprob_fn: LogprobFn = response_logprobs,
    ):
        self.config = config.validate()
        self.generation = (generation or GenerationConfig()).validate()
        self.world_size, self.rank = dist.world_size(), dist.rank()
        c = self.config
        self.local_batch_size, self.local_minibatch_size = dist.check_batch_sizes(
            c.batch_size, c.minibatch_size, c.micro_batch_size, self.world_size
        )
        if c.critic_free != (value is None):
            need = "uses no value model: pass value=None" if c.critic_free else "needs a value model"
            raise ValueError(f"value: advantage_estimator={c.advantage_estimator!r} {need}")
        if self.local_batch_size % c.group_size:  # a group must not straddle two ranks
            raise ValueError(f"PPOConfig.group_size={c.group_size} must divide the per-rank batch "
                             f"{self.local_batch_size} (batch_size {c.batch_size} over {self.world_size} ranks)")
        if ref is None:
            # Never the policy itself (KL would be 0 by construction): the adapter-disabled base for
            # a LoRA policy, else a frozen copy of the policy as it is now.
            ref = Reference(policy)
        for model in (policy, ref, value, reward):
            if isinstance(model, nn.Module):
                disable_dropout(model)  # however a checkpoint stored it; LoRA dropout too
        if isinstance(reward, RewardModel) and reward.tokenizer is None:
            reward.tokenizer = tokenizer  # same vocabulary as the policy unless given its own
        policy, ref, value, reward = dist.prepare_models(policy, ref, value, reward, c)
        self.policy, self.ref, self.value, self.reward, self.tokenizer = policy, ref, value, reward, tokenizer
        self.logprob_fn = logprob_fn
        self.generator = SequenceGenerator(policy, tokenizer, self.generation, ref, value)
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("policy: no trainable parameters")
        self.policy_optimizer = torch.optim.AdamW(params, lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay)
        self.value_optimizer = None if value is None else torch.optim.AdamW(
            # A value head on the policy's trunk gives only its head here: the trunk is the policy's.
            value.trainable_parameters(),
            lr=c.effective_value_lr, eps=c.adam_eps, weight_decay=c.weight_decay,
        )
        self.kl_controller = (
            AdaptiveKLController(c.kl_coef, c.kl_target, c.kl_horizon) if c.adaptive_kl else FixedKLController(c.kl_coef)
        )
        # Optional: given a sample of each step's rollouts at the end of the step (ppolab.inspect.RolloutRecorder).
        self.recorder = recorder
        self.steps_done = 0
        self.timings: dict[str, float] = {}  # seconds per phase of the current step
        torch.manual_seed(c.seed + self.rank)  # ranks sample different rollouts; rank 0 as a single process

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, rollout: Rollout) -> torch.Tensor:
        """`[B]` float scores of the rollout's responses; non-finite scores are an error."""
        r = self.reward
        if isinstance(r, RewardModel):
            # The one path of reward training and normalisation too: the text prompt + response +
            # EOS, tokenized afresh. A response cut at max_new_tokens is scored as if it ended
            # there; `missing_eos_penalty` is what marks it down.
            scores = r.score(rollout.prompts, rollout.response_texts)
        elif isinstance(r, nn.Module):
            scores = sequence_classifier_scores(r, rollout.input_ids, rollout.attention_mask)
        else:
            scores = r(rollout.prompts, rollout.response_texts)
        scores = torch.as_tensor(scores, dtype=torch.float32, device=rollout.mask.device).reshape(-1)
        if scores.shape[0] != len(rollout):
            raise ValueError(f"reward: returned {scores.shape[0]} scores for {len(rollout)} responses")
        bad = (~torch.isfinite(scores)).nonzero()
        if len(bad):
            raise ValueError(f"reward: non-finite score {scores[bad[0, 0]].item()} for response {bad[0, 0].item()}")
        return scores

    # -- one PPO step, in three stages a reader can call one by one ------------------------------
    def ppo_step(self, prompts: list[str]) -> dict:
        """Generate, score and update: `update(make_experience(rollout(prompts)))`, plus stats."""
        group = self.config.group_size
        if len(prompts) * group != self.local_batch_size:
            per_rank = f" over {self.world_size} ranks: {self.local_batch_size} per rank" if self.world_size > 1 else ""
            sampled = f", each sampled group_size={group} times" if group > 1 else ""
            raise ValueError(f"prompts: got {len(prompts)}{sampled}, PPOConfig.batch_size is "
                             f"{self.config.batch_size}{per_rank}")
        rollout = self.rollout(prompts)
        experience = self.make_experience(rollout)
        train_stats = self.update(experience)
        return self.finish_step(rollout, experience, train_stats)

    def rollout(self, prompts: list[str]) -> Rollout:
        """Stage 1: sample responses (each prompt `group_size` times, in consecutive rows); policy,
        reference and value score them in one forward each."""
        rollout = self.generator.generate([p for p in prompts for _ in range(self.config.group_size)])
        self.timings = dict(self.generator.timings)
        return rollout

    @torch.no_grad()
    def make_experience(self, rollout: Rollout) -> Experience:
        """Stage 2: scores `[B]` -> KL-penalised rewards `[B, T]` -> advantages and returns `[B, T]`."""
        c = self.config
        mask = rollout.mask
        with timed(self.timings, "reward_forward"):
            scores = self.score(rollout)
        with timed(self.timings, "advantage"):
            kl = per_token_kl(rollout.logprobs, rollout.ref_logprobs, mask, c.kl_estimator)
            rewards = kl_penalized_rewards(
                scores, kl, mask, self.kl_controller.value if c.kl_in == "reward" else 0.0,
                missing_eos_penalty=c.missing_eos_penalty, has_eos=rollout.has_eos,
            )
            if c.whiten_rewards:
                rewards = dist.global_masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = self.estimate_advantages(rewards, rollout.values, mask)
        return Experience(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, mask=mask,
            logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs, values=rollout.values,
            advantages=advantages, returns=returns, scores=scores, kl=kl, rewards=rewards,
            sampler_logprobs=rollout.sampler_logprobs,
        )

    def estimate_advantages(
        self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimator switch: token rewards `[B, T]` -> `(advantages, returns)`, both `[B, T]`.

        A response's sequence reward is the sum of its token rewards: its score (less any
        missing-EOS penalty), less `kl_coef * KL` when `kl_in="reward"`. G is `group_size`.

            gae           gae(rewards, values, gamma, lam); global masked_whiten if whiten_advantages
            grpo          expand_to_tokens(group_advantages(rewards.sum(-1), G))
            dr_grpo       expand_to_tokens(group_advantages(rewards.sum(-1), G, scale="none"))
            rloo          expand_to_tokens(rloo_advantages(rewards.sum(-1), G))
            reinforce_pp  global_masked_whiten(rewards_to_go(rewards, gamma))     REINFORCE++ (Hu 2025),
                          a composition: KL-penalised rewards, returns-to-go (gamma 1 by default), whitened
                          over all tokens of the whole (all ranks') batch

        Critic-free returns are the rewards-to-go: logged, never trained on (there is no value model).
        Groups lie inside one rank's rows (checked at construction), so they need no collective.
        """
        c = self.config
        if c.advantage_estimator == "gae":
            advantages, returns = gae(rewards, values, mask, c.gamma, c.lam)
            if c.whiten_advantages:
                advantages = dist.global_masked_whiten(advantages, mask)
            return advantages, returns
        returns = rewards_to_go(rewards, mask, c.gamma)
        if c.advantage_estimator == "reinforce_pp":
            return dist.global_masked_whiten(returns, mask), returns
        sequence_rewards = torch.where(mask.bool(), rewards, 0.0).sum(-1)  # [B]
        if c.advantage_estimator == "rloo":
            per_sequence = rloo_advantages(sequence_rewards, c.group_size)
        else:
            scale = "std" if c.advantage_estimator == "grpo" else "none"
            per_sequence = group_advantages(sequence_rewards, c.group_size, scale=scale)
        return expand_to_tokens(per_sequence, mask), returns

    def update(self, experience: Experience) -> dict:
        """Stage 3: PPO epochs over shuffled minibatches of the experience; returns mean losses."""
        buffer = ExperienceBuffer()
        buffer.add(experience)
        with timed(self.timings, "update"):
            return self._update(buffer, n_response=experience.mask.shape[1])

    def finish_step(self, rollout: Rollout, experience: Experience, train_stats: dict) -> dict:
        """Update the KL controller and gather the step's statistics (of all ranks' rollouts)."""
        mask, scores, rewards = rollout.mask, experience.scores, experience.rewards
        k1 = per_token_kl(rollout.logprobs, rollout.ref_logprobs, mask, "k1")
        texts, has_eos = rollout.response_texts, rollout.has_eos
        if self.world_size > 1:  # every rank's rows in rank order, so all ranks log and steer alike
            mask, scores, rewards, k1, has_eos = dist.all_gather_rows(mask, scores, rewards, k1, has_eos)
            texts = dist.all_gather_objects(texts)
        kl_per_sequence = float(k1.sum(-1).mean())
        kl_coef = self.kl_controller.value if self.config.kl_in == "reward" else 0.0  # the reward penalty's
        self.kl_controller.update(kl_per_sequence, len(scores))
        self.steps_done += 1
        n_tokens = float(mask.sum())
        stats = {
            "step": self.steps_done,
            "generated_texts": texts,
            "scores": scores.tolist(),
            "score_mean": float(scores.mean()),
            "rewards": rewards.sum(-1).tolist(),
            "reward_mean": float(rewards.sum(-1).mean()),
            "kl": kl_per_sequence,
            "kl_per_token": float(k1.sum() / n_tokens),
            "kl_coef": float(kl_coef),
            "response_length": n_tokens / len(scores),
            "eos_fraction": float(has_eos.float().mean()),
            **train_stats,
            # Sampler vs trainer log-probs (rank 0's rows): 0 when the sampler is the policy's own path.
            **(mismatch_stats(rollout.logprobs, rollout.sampler_logprobs, rollout.mask)
               if rollout.sampler_logprobs is not None else {}),
            "timings": dict(self.timings),
            "tokens": int(n_tokens),
        }
        if self.recorder is not None and self.rank == 0:  # a sample of rank 0's rows is enough to look at
            self._record(rollout, experience, stats)
        return stats

    @torch.no_grad()
    def _record(self, rollout: Rollout, experience: Experience, stats: dict) -> None:
        """Hand the recorder the step's tensors, with the recorded rows' log-probs after the update.

        One extra no-grad policy forward over just the recorded rows: the update's own log-probs are of
        shuffled minibatches before each optimizer step, not of the final policy.
        """
        rows = self.recorder.select(self.steps_done, rollout.prompts)
        if not rows:
            return
        idx = torch.tensor(rows, device=rollout.mask.device)
        new_logprobs = self.logprob_fn(self.policy, rollout.input_ids[idx], rollout.attention_mask[idx],
                                         rollout.mask.shape[1], self.generation.temperature)
        self.recorder.record(self.steps_done, rollout, experience, new_logprobs, stats, self.tokenizer,
                             clip_eps=self.config.clip_eps, rows=rows)

    def _update(self, buffer: ExperienceBuffer, n_response: int) -> dict:
        """PPO epochs over shuffled minibatches; each optimizer step accumulates micro-batches."""
        c = self.config
        mode = c.loss_aggregation
        # A fixed L for seq-mean-token-sum-norm: micro-batches and ranks hold responses of other widths.
        norm_length = self.generation.max_new_tokens if mode == "seq-mean-token-sum-norm" else None
        optimizers = [o for o in (self.policy_optimizer, self.value_optimizer) if o is not None]
        self.policy.train()  # dropout was disabled when the models were built; train() only enables grads paths
        if self.value is not None:
            self.value.train()
        sums: dict[str, float] = {}
        n_steps = 0
        dist.check_same_across_ranks(len(buffer), "rollouts in the experience")  # else collectives hang
        for micro_batches in buffer.minibatches(
            self.local_minibatch_size, c.ppo_epochs, seed=c.seed + self.steps_done,
            micro_batch_size=c.micro_batch_size or self.local_minibatch_size,
        ):
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            # Exact accumulation: each micro-batch's loss is weighted by its share of what the
            # minibatch's loss averages over - tokens for token-mean (and the value loss and the
            # logged token statistics), rows for the seq-mean modes - so the weighted sum is the
            # whole minibatch's loss. Data-parallel, the minibatch is all ranks' rows: the shares are
            # of the global counts, so SUM-reducing the gradients gives the one-process gradient.
            total_tokens = dist.all_sum(sum(float(mb.mask.sum()) for mb in micro_batches))
            total_units = dist.all_sum(float(sum(aggregation_units(mb.mask, mode) for mb in micro_batches)))
            step: dict[str, float] = {}
            for mb in micro_batches:
                loss, stats = minibatch_loss(
                    self.policy, self.value, mb, c, n_response=n_response, temperature=self.generation.temperature,
                    policy_weight=aggregation_units(mb.mask, mode) / total_units,
                    token_weight=float(mb.mask.sum()) / total_tokens, logprob_fn=self.logprob_fn,
                    norm_length=norm_length,
                )
                loss.backward()
                for k, v in stats.items():
                    step[k] = step.get(k, 0.0) + v
            param_lists = [[p for g in o.param_groups for p in g["params"]] for o in optimizers]
            self._reduce_gradients([p for params in param_lists for p in params])
            step = dist.all_sum(step)  # each rank held its share of the minibatch means
            if c.max_grad_norm > 0:  # after the reduction: every rank clips by the same global norm
                step["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(param_lists[0], c.max_grad_norm))
                for params in param_lists[1:]:  # the value model's, clipped on its own
                    torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            for o in optimizers:
                o.step()
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
        self.policy.eval()
        if self.value is not None:
            self.value.eval()
        return {k: v / n_steps for k, v in sums.items()}

    def _reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Sum the gradients of `params` over the ranks (the micro-batch weights are global shares)."""
        dist.all_reduce_gradients(params)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs besides the models' weights: optimizers, KL controller,
        steps done and the RNG states (sampling draws from torch's global generator)."""
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "value_optimizer": None if self.value_optimizer is None else self.value_optimizer.state_dict(),
            "kl_controller": dict(vars(self.kl_controller)),
            "steps_done": self.steps_done,
            "rng": rng,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output into a trainer built on the same models and config."""
        if (state["value_optimizer"] is None) != (self.value_optimizer is None):
            raise ValueError("load_state_dict: the checkpoint's value optimizer does not match this trainer's "
                             f"(advantage_estimator={self.config.advantage_estimator!r})")
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        if self.value_optimizer is not None:
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        vars(self.kl_controller).update(state["kl_controller"])
        self.steps_done = int(state["steps_done"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
