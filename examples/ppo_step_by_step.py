"""PPO on a language model, one stage at a time: first healthy, then with the KL penalty off.

    uv run python examples/ppo_step_by_step.py [--steps 60]    # about a minute on one CPU thread
    uv run ppolab inspect --run runs/step_by_step        # then both runs, token by token

A tiny causal LM (built here, random weights, no download) learns to answer prompts with Arabic
script, because the reward is the share of Arabic letters in its response. Each iteration does
the three stages of `PPOTrainer.ppo_step` by hand so that every tensor can be printed:

  1. rollout          prompts -> sampled responses + policy/reference log-probs + values  [B, T]
  2. make_experience  scores [B] -> per-token KL -> rewards [B, T] -> GAE advantages, returns
  3. update           PPO epochs over minibatches: clipped policy loss + clipped value loss

Run 1 uses settings under which PPO is healthy: a modest learning rate, and the adaptive KL
controller holding the policy near the reference. Run 2 is the same loop with the KL penalty
off: the score climbs faster, the KL explodes and the text degenerates into a few repeated
Arabic words — reward hacking. Both runs record 4 rollouts per step to
runs/step_by_step/rollouts.jsonl for the inspector.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub

import torch

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.inspect import RolloutRecorder, token_texts
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

# The two runs differ in the KL penalty only.
# Healthy: each update moves the policy a little (clip fraction 0.1-0.3), and the adaptive controller
# steers beta so that the KL to the reference stays near 4 nats per response. A short horizon lets beta
# react within this short run (Ziegler et al. use 10k samples over far longer runs).
HEALTHY = dict(lr=3e-3, ppo_epochs=3, kl_coef=0.05, adaptive_kl=True, kl_target=4.0, kl_horizon=64)
NO_KL = dict(HEALTHY, kl_coef=0.0, adaptive_kl=False)

# Each figure of the step table, with what a healthy value looks like.
GUIDE = [
    ("score", "mean reward of the batch: rises, not necessarily fast"),
    ("kl/seq", "KL(policy || reference) per response, nats: healthy stays near the target (4 here); tens = left the reference's language"),
    ("beta", "the KL coefficient: the adaptive controller raises it while kl/seq is above target"),
    ("clipfrac", "share of tokens whose ratio left 1 ± 0.2 in the update: healthy 0.1-0.3; 0.5+ = each update moves too far"),
    ("approx_kl", "KL between the policy before and after one update: healthy below ~0.05"),
    ("entropy", "per-token entropy of the policy (nats): falls slowly; a collapse = it repeats itself"),
    ("distinct", "share of distinct tokens in a response: falls toward 0 when the text turns into repetition"),
]


def show(name: str, x: torch.Tensor, row: int = 0) -> None:
    """Print a tensor's shape and its first row, rounded."""
    vals = x[row].tolist() if x.dim() > 1 else x.tolist()
    vals = [round(v, 3) if isinstance(v, float) else v for v in vals][:12]
    print(f"  {name:<14} {str(tuple(x.shape)):<10} row {row}: {vals}{' ...' if x.shape[-1] > 12 else ''}")


def readable(tokenizer, ids: list[int]) -> str:
    """A response as its tokens separated by ¦: whole characters, or bytes as bytes (\\xd8), never �.

    Byte-level tokens can hold half of an Arabic letter; `token_texts` gives each letter to the
    token that completes it and shows a token holding only a letter's first byte as that byte.
    """
    return "¦".join(text.replace("\n", "↵") for text in token_texts(tokenizer, ids))


def distinct_share(rollout) -> float:
    """Mean over responses of (distinct tokens / tokens): 1 for varied text, near 0 for one repeated word."""
    n = rollout.mask.sum(-1).clamp_min(1)
    return float(sum(len(set(rollout.response_ids[i, : int(n[i])].tolist())) / int(n[i])
                     for i in range(len(rollout))) / len(rollout))


def print_first_step(tokenizer, prompts, rollout, exp) -> None:
    ids = rollout.response_ids[0, : int(rollout.mask[0].sum())].tolist()
    print(f"1. rollout (row 0 is: {prompts[0]!r} -> {readable(tokenizer, ids)})")
    show("response_ids", rollout.response_ids)
    show("mask", rollout.mask)
    show("logprobs", rollout.logprobs)
    show("ref_logprobs", rollout.ref_logprobs)
    show("values", rollout.values)
    print("   state-action pairs of row 0 (state = prompt + tokens so far):")
    for sa, text in list(zip(rollout.state_actions(0, tokenizer), token_texts(tokenizer, ids)))[:4]:
        print(f"     t={sa.t} action='{text}'{' ' * max(0, 8 - len(text))} logp={sa.logprob:.3f} "
              f"ref={sa.ref_logprob:.3f} kl={sa.kl:.3f} V={sa.value:.3f}")
    print("2. experience")
    show("scores", exp.scores)
    show("kl", exp.kl)
    show("rewards", exp.rewards)
    show("advantages", exp.advantages)
    show("returns", exp.returns)


def run(name: str, settings: dict, args, out: Path, verbose: bool) -> dict:
    """One PPO run of `args.steps` steps from the same seeded model; returns its last-steps figures."""
    torch.manual_seed(args.seed)
    # The models: policy, frozen reference (a copy of the policy at the start), value model.
    tokenizer = build_tokenizer()  # byte-level BPE trained in memory: no download
    policy = build_policy(ModelConfig(arch="llama", n_layers=2, hidden_size=64, seed=args.seed), tokenizer)
    reference = Reference(policy)
    value = ValueModel.from_policy(policy)
    config = PPOConfig(batch_size=16, minibatch_size=8, seed=args.seed, **settings)
    recorder = RolloutRecorder(out / "rollouts.jsonl", per_step=args.record, stage=name)
    trainer = PPOTrainer(config, policy, reference, value, arabic_share, tokenizer,
                         GenerationConfig(max_new_tokens=16, temperature=1.0), recorder=recorder)
    prompts = (PROMPTS * 4)[: config.batch_size]
    kl = f"adaptive KL, beta from {config.kl_coef}, target {config.kl_target}" if config.adaptive_kl else f"KL coef {config.kl_coef}"
    print(f"\n=== run '{name}': lr {config.lr}, {config.ppo_epochs} PPO epochs, {kl} ===")
    if verbose:
        print(f"policy: {sum(p.numel() for p in policy.parameters()):,} parameters; "
              f"batch {config.batch_size}, minibatch {config.minibatch_size}\n")

    rows, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        # 1. Rollout: sample with the KV cache, then one forward per model scores every token.
        rollout = trainer.rollout(prompts)
        # 2. Experience: reward at the last token, KL penalty on every token, then GAE.
        exp = trainer.make_experience(rollout)
        if verbose and step == 1:
            print_first_step(tokenizer, prompts, rollout, exp)
        # 3. Update: PPO epochs over shuffled minibatches, clipped losses, gradient clipping.
        stats = trainer.finish_step(rollout, exp, trainer.update(exp))  # finish_step also records rollouts
        if verbose and step == 1:
            print("3. update")
            for k in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy"):
                print(f"  {k:<14} {stats[k]:.4f}")
        if step == 1:
            if verbose:
                print("\nwhat each figure means, and what a healthy value looks like:")
                for k, note in GUIDE:
                    print(f"  {k:<10} {note}")
            print("\nstep  score  kl/seq   beta  clipfrac  approx_kl  entropy  distinct  seconds")
        row = dict(score=stats["score_mean"], kl=stats["kl"], beta=stats["kl_coef"], clipfrac=stats["clipfrac"],
                   approx_kl=stats["approx_kl"], entropy=stats["entropy"], distinct=distinct_share(rollout))
        rows.append(row)
        if step > 3 and step % 5 and step != args.steps:
            continue  # every 5th step is enough to see the trend
        print(f"{step:>4}  {row['score']:.3f}  {row['kl']:6.2f}  {row['beta']:.3f}  {row['clipfrac']:8.3f}  "
              f"{row['approx_kl']:9.4f}  {row['entropy']:7.3f}  {row['distinct']:8.2f}  {time.time() - t0:7.1f}")
    tail = rows[-5:]  # where the run ended up: the mean of its last 5 steps
    last = {k: sum(r[k] for r in tail) / len(tail) for k in rows[0]}
    # How big the updates were: the mean over the run (step 1 starts from a random value head).
    for k in ("clipfrac", "approx_kl"):
        last[k] = sum(r[k] for r in rows[1:]) / max(len(rows) - 1, 1)
    last["first_score"] = rows[0]["score"]
    ids = rollout.response_ids[0, : int(rollout.mask[0].sum())].tolist()
    last["response"] = readable(tokenizer, ids)
    return last


def verdict(name: str, f: dict) -> None:
    ok = lambda good: "ok" if good else "UNHEALTHY"  # noqa: E731
    print(f"\n{name}: score {f['first_score']:.2f} -> {f['score']:.2f} (mean of the last 5 steps)")
    print(f"  clip fraction {f['clipfrac']:6.2f}  [{ok(0.1 <= f['clipfrac'] <= 0.3)}] healthy 0.1-0.3 (mean over the run)")
    print(f"  approx KL     {f['approx_kl']:6.3f}  [{ok(f['approx_kl'] <= 0.05)}] healthy below ~0.05 per update")
    print(f"  KL per seq    {f['kl']:6.1f}  [{ok(f['kl'] <= 12)}] healthy near the target of 4 nats, not tens")
    print(f"  entropy       {f['entropy']:6.2f}  [{ok(f['entropy'] >= 1)}] healthy falls slowly; near 0 = one choice left")
    print(f"  distinct      {f['distinct']:6.2f}  [{ok(f['distinct'] >= 0.5)}] healthy: varied text; near 0 = one word repeated")
    print(f"  last response {f['response']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="PPO steps per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", type=int, default=4, help="rollouts per step recorded for the inspector (0 = off)")
    ap.add_argument("--out", default="runs/step_by_step", help="where rollouts.jsonl goes")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a tiny model: a second thread costs more than it gives
    out = Path(args.out)
    healthy = run("healthy", HEALTHY, args, out, verbose=True)
    hacked = run("no_kl", NO_KL, args, out, verbose=False)
    verdict("healthy (adaptive KL)", healthy)
    verdict("KL penalty off", hacked)
    print("\nWithout the KL penalty nothing holds the policy near the reference model: it finds that one"
          "\nArabic word repeated scores perfectly, the KL per sequence climbs into the tens and the entropy"
          "\ncollapses (reward hacking). Its clip fraction can look healthy all along: it measures the size"
          "\nof each update, not where the updates lead. Watch the KL and the text."
          f"\n\nSee both runs token by token (colour by KL, ratio, advantage...):"
          f"\n  uv run ppolab inspect --run {out}            # a page on http://127.0.0.1:8001/"
          f"\n  uv run ppolab inspect --run {out} --html {out}/inspect.html   # one static file")


if __name__ == "__main__":
    main()
