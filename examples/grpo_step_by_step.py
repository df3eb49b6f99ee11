"""GRPO on a language model, one stage at a time: the critic-free loop. Run it, or step through it.

    uv run python examples/grpo_step_by_step.py [--steps 20] [--estimator grpo|dr_grpo|rloo]

The same task as examples/ppo_step_by_step.py (a tiny random causal LM learns to answer with Arabic
script; the reward is the share of Arabic letters), with no value model. Each prompt is sampled
`group_size` times, and a sample's advantage is how much better it scored than its siblings:

  1. rollout          4 prompts x 4 samples -> 16 responses, in groups of consecutive rows  [B, T]
  2. make_experience  scores [B] -> per-group mean and std -> advantages [B] -> every token [B, T]
  3. update           clipped policy loss (seq-mean-token-mean, as in GRPO) + k3 KL to the reference
                      as a loss term; no value loss, no value optimizer

The first iteration prints everything, recomputing stage 2 by hand with ppolab's pure functions;
later ones print one line each. The mean score rises.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub

import torch

from ppolab.advantage import expand_to_tokens, group_advantages, rloo_advantages
from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.models import Reference, build_policy, build_tokenizer
from ppolab.ppo import PPOTrainer

# The same task and printing as the PPO example (the script's own folder is on sys.path).
from ppo_step_by_step import PROMPTS, arabic_share, show  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimator", default="grpo", choices=["grpo", "dr_grpo", "rloo"])
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    # The models: policy and frozen reference. No value model: value=None.
    tokenizer = build_tokenizer()  # byte-level BPE trained in memory: no download
    policy = build_policy(ModelConfig(arch="llama", n_layers=2, hidden_size=64, seed=args.seed), tokenizer)
    config = PPOConfig(batch_size=16, minibatch_size=8, ppo_epochs=4, lr=1e-2, seed=args.seed,
                       advantage_estimator=args.estimator, group_size=4, loss_aggregation="seq-mean-token-mean",
                       kl_in="loss", kl_loss_coef=0.01)
    trainer = PPOTrainer(config, policy, Reference(policy), None, arabic_share, tokenizer,
                         GenerationConfig(max_new_tokens=16, temperature=1.0))
    G = config.group_size
    print(f"policy: {sum(p.numel() for p in policy.parameters()):,} parameters; {len(PROMPTS)} prompts x "
          f"{G} samples = batch {config.batch_size}; {args.estimator}, no value model\n")

    first_score, t0 = None, time.time()
    for step in range(1, args.steps + 1):
        # 1. Rollout: each prompt sampled G times, in consecutive rows; reference log-probs too.
        rollout = trainer.rollout(PROMPTS)
        # 2. Experience: score each response, compare it with its group, spread it over its tokens.
        exp = trainer.make_experience(rollout)
        if step == 1:
            print("1. rollout: group 0 is", repr(PROMPTS[0]))
            for i in range(G):
                print(f"     sample {i}: {rollout.response_texts[i]!r}")
            show("response_ids", rollout.response_ids)
            show("mask", rollout.mask)
            show("logprobs", rollout.logprobs)
            show("ref_logprobs", rollout.ref_logprobs)
            print("2. experience (recomputed here with the pure functions)")
            scores = exp.scores
            groups = scores.view(-1, G)
            show("scores", scores)
            show("group mean", groups.mean(1))
            show("group std", groups.std(1))
            if args.estimator == "rloo":
                per_sequence = rloo_advantages(scores, G)  # minus the mean of the other G - 1
            else:  # (s - mean) / (std + eps); Dr. GRPO: s - mean
                per_sequence = group_advantages(scores, G, scale="std" if args.estimator == "grpo" else "none")
            show("advantages [B]", per_sequence)
            tokens = expand_to_tokens(per_sequence, rollout.mask)
            show("advantages", tokens)
            assert torch.allclose(tokens, exp.advantages, atol=1e-6)  # what the trainer computed
        # 3. Update: clipped policy loss + KL loss over minibatches; no value model anywhere.
        losses = trainer.update(exp)
        stats = trainer.finish_step(rollout, exp, losses)
        if step == 1:
            print("3. update")
            for k in ("policy_loss", "kl_loss", "clipfrac", "approx_kl", "entropy"):
                print(f"  {k:<14} {stats[k]:.4f}")
            print("\nstep  score  kl/token  policy_loss  kl_loss  clipfrac  seconds")
        first_score = first_score if first_score is not None else stats["score_mean"]
        print(f"{step:>4}  {stats['score_mean']:.3f}  {stats['kl_per_token']:8.4f}  {stats['policy_loss']:11.4f}  "
              f"{stats['kl_loss']:7.4f}  {stats['clipfrac']:8.3f}  {time.time() - t0:7.1f}")
    print(f"\nmean score {first_score:.3f} -> {stats['score_mean']:.3f}; "
          f"last response: {stats['generated_texts'][0]!r}")


if __name__ == "__main__":
    main()
