"""PPO on a language model, one stage at a time. Run it, or step through it in a debugger.

    uv run python examples/ppo_step_by_step.py [--steps 20]

A tiny causal LM (built here, random weights, no download) learns to answer prompts with Arabic
script, because the reward is the share of Arabic letters in its response. Each iteration does
the three stages of `PPOTrainer.ppo_step` by hand so that every tensor can be printed:

  1. rollout          prompts -> sampled responses + policy/reference log-probs + values  [B, T]
  2. make_experience  scores [B] -> per-token KL -> rewards [B, T] -> GAE advantages, returns
  3. update           PPO epochs over minibatches: clipped policy loss + clipped value loss

The first iteration prints everything; later ones print one line each. The mean score rises.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub

import torch

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.models import Reference, ValueModel, build_policy, build_tokenizer
from ppolab.ppo import PPOTrainer


def arabic_share(prompts: list[str], responses: list[str]) -> list[float]:
    """The reward: share of characters in the Arabic block. Any (prompts, responses) -> scores works."""
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


PROMPTS = [
    "Translate English to Arabic: Good morning.",
    "Translate English to Arabic: Where is the station?",
    "Traduire en arabe : Merci beaucoup.",
    "Translate English to Arabic: The weather is nice today.",
]


def show(name: str, x: torch.Tensor, row: int = 0) -> None:
    """Print a tensor's shape and its first row, rounded."""
    vals = x[row].tolist() if x.dim() > 1 else x.tolist()
    vals = [round(v, 3) if isinstance(v, float) else v for v in vals][:12]
    print(f"  {name:<14} {str(tuple(x.shape)):<10} row {row}: {vals}{' ...' if x.shape[-1] > 12 else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    # The models: policy, frozen reference (a copy of the policy at the start), value model.
    tokenizer = build_tokenizer()  # byte-level BPE trained in memory: no download
    policy = build_policy(ModelConfig(arch="llama", n_layers=2, hidden_size=64, seed=args.seed), tokenizer)
    reference = Reference(policy)
    value = ValueModel.from_policy(policy)
    config = PPOConfig(batch_size=16, minibatch_size=8, ppo_epochs=4, lr=1e-2, kl_coef=0.01, seed=args.seed)
    trainer = PPOTrainer(config, policy, reference, value, arabic_share, tokenizer,
                         GenerationConfig(max_new_tokens=16, temperature=1.0))
    prompts = (PROMPTS * 4)[: config.batch_size]
    print(f"policy: {sum(p.numel() for p in policy.parameters()):,} parameters; "
          f"batch {config.batch_size}, minibatch {config.minibatch_size}, {config.ppo_epochs} PPO epochs\n")

    first_scores, t0 = None, time.time()
    for step in range(1, args.steps + 1):
        # 1. Rollout: sample with the KV cache, then one forward per model scores every token.
        rollout = trainer.rollout(prompts)
        # 2. Experience: reward at the last token, KL penalty on every token, then GAE.
        exp = trainer.make_experience(rollout)
        if step == 1:
            print("1. rollout (row 0 is:", repr(prompts[0]), "->", repr(rollout.response_texts[0]), ")")
            show("response_ids", rollout.response_ids)
            show("mask", rollout.mask)
            show("logprobs", rollout.logprobs)
            show("ref_logprobs", rollout.ref_logprobs)
            show("values", rollout.values)
            print("   state-action pairs of row 0 (state = prompt + tokens so far):")
            for sa in rollout.state_actions(0, tokenizer)[:3]:
                print(f"     t={sa.t} action={sa.action_token!r:<8} logp={sa.logprob:.3f} "
                      f"ref={sa.ref_logprob:.3f} kl={sa.kl:.3f} V={sa.value:.3f}")
            print("2. experience")
            show("scores", exp["scores"])
            show("kl", exp["kl"])
            show("rewards", exp["rewards"])
            show("advantages", exp["advantages"])
            show("returns", exp["returns"])
        # 3. Update: PPO epochs over shuffled minibatches, clipped losses, gradient clipping.
        losses = trainer.update(exp)
        stats = trainer.finish_step(rollout, exp, losses)
        if step == 1:
            print("3. update")
            for k in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy"):
                print(f"  {k:<14} {stats[k]:.4f}")
            print("\nstep  score  kl/seq  policy_loss  value_loss  clipfrac  seconds")
        first_scores = first_scores or stats["score_mean"]
        print(f"{step:>4}  {stats['score_mean']:.3f}  {stats['kl']:6.3f}  {stats['policy_loss']:11.4f}  "
              f"{stats['value_loss']:10.4f}  {stats['clipfrac']:8.3f}  {time.time() - t0:7.1f}")
    print(f"\nmean score {first_scores:.3f} -> {stats['score_mean']:.3f}; "
          f"last response: {stats['generated_texts'][0]!r}")


if __name__ == "__main__":
    main()
