"""PPO+GAE against the critic-free estimators on the embedded translation task, at equal generated tokens.

    uv run python benchmarks/estimators.py --sft RUN/sft            # 5 estimators x 3 seeds
    uv run python benchmarks/estimators.py --sft RUN/sft --quick    # a smoke run (seconds per estimator)

`RUN/sft` is the SFT model of the cpu-test preset (`ppolab sft --run RUN`). Each run starts from it,
with a frozen copy as the KL reference, and samples EN/FR->AR translation prompts of the shipped
training split until it has generated `--tokens` response tokens; the reward is sentence chrF
against the reference translation / 100 (a callable: no reward model). Wall time counts the
training steps only (rollout + update), not the evaluation. At the end, greedy translations of the
first `--test` held-out test sentences are scored with corpus chrF.

Each estimator runs its usual recipe (ppolab.config.PPOConfig switches; written into the JSON):

    ppo_gae       GAE + value model, token-mean, KL in the reward (the cpu-test preset's PPO)
    grpo          groups of 4, std-normalised, seq-mean-token-mean, k3 KL in the loss (DeepSeekMath)
    dr_grpo       groups of 4, mean-centred only, seq-mean-token-sum-norm, k3 KL in the loss
    rloo          groups of 4, leave-one-out baseline, token-mean, KL in the reward
    reinforce_pp  REINFORCE++: KL-penalised rewards-to-go whitened over the batch, token-mean

Writes `--out`.json (settings, per-run curves and a summary table) and `--out`.png (reward against
wall time, mean over seeds; held-out chrF against wall time per run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ppolab.config import GenerationConfig, PPOConfig
from ppolab.data import build_prompt, load_shipped_corpus
from ppolab.metrics import sentence_chrf
from ppolab.models import Reference, ValueModel
from ppolab.ppo import PPOTrainer
from ppolab.sft import load_sft
from ppolab.sft.translate import evaluate_translation

# The cpu-test preset's PPO settings, shared by every estimator.
BASE = dict(batch_size=16, minibatch_size=8, ppo_epochs=2, lr=5e-5, kl_coef=0.1, vf_coef=0.1)
RECIPES = {
    "ppo_gae": dict(advantage_estimator="gae"),
    "grpo": dict(advantage_estimator="grpo", group_size=4, loss_aggregation="seq-mean-token-mean",
                 kl_in="loss", kl_loss_coef=0.04),
    "dr_grpo": dict(advantage_estimator="dr_grpo", group_size=4, loss_aggregation="seq-mean-token-sum-norm",
                    kl_in="loss", kl_loss_coef=0.04),
    "rloo": dict(advantage_estimator="rloo", group_size=4),
    "reinforce_pp": dict(advantage_estimator="reinforce_pp"),
}


class ChrfReward:
    """Sentence chrF / 100 of each response against its prompt's reference translation."""

    def __init__(self, references: dict[str, str]):
        self.references = references

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        refs = [self.references[p] for p in prompts]
        return [s / 100.0 for s in sentence_chrf([r.strip() for r in responses], refs)]


def run_one(name: str, seed: int, args, train, test) -> dict:
    policy, tok = load_sft(args.sft)
    prompts = {build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tok): ex.target for ex in train}
    config = PPOConfig(**{**BASE, "lr": args.lr}, **RECIPES[name], seed=seed)
    value = None if config.critic_free else ValueModel.from_policy(policy)
    trainer = PPOTrainer(config, policy, Reference(policy), value, ChrfReward(prompts), tok,
                         GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0))
    pool, n_prompts = sorted(prompts), config.batch_size // config.group_size
    curve, tokens, wall, step = [], 0, 0.0, 0
    while tokens < args.tokens:
        batch = random.Random(seed * 100_003 + step).sample(pool, n_prompts)
        t0 = time.perf_counter()
        stats = trainer.ppo_step(batch)
        wall += time.perf_counter() - t0
        tokens += stats["tokens"]
        step += 1
        curve.append({"step": step, "tokens": tokens, "wall_s": round(wall, 2), "reward": stats["score_mean"],
                      "kl_per_token": stats["kl_per_token"], "response_length": stats["response_length"]})
        print(f"{name:<13} seed {seed} step {step:>3} tokens {tokens:>6} wall {wall:6.1f}s "
              f"reward {stats['score_mean']:.3f} kl/token {stats['kl_per_token']:.4f}", flush=True)
    chrf = evaluate_translation(trainer.policy.eval(), tok, test, max_new_tokens=args.max_new_tokens)["chrf"]
    k = max(1, len(curve) // 5)  # start/end rewards: means over the first/last fifth of the steps
    return {"estimator": name, "seed": seed, "steps": step, "tokens": tokens, "wall_s": round(wall, 2),
            "reward_start": statistics.mean(c["reward"] for c in curve[:k]),
            "reward_end": statistics.mean(c["reward"] for c in curve[-k:]),
            "chrf_test": chrf, "curve": curve}


def summarise(runs: list[dict]) -> dict:
    table = {}
    for name in RECIPES:
        mine = [r for r in runs if r["estimator"] == name]
        if not mine:
            continue
        row = {}
        for key in ("reward_start", "reward_end", "chrf_test", "wall_s", "tokens", "steps"):
            values = [r[key] for r in mine]
            row[key] = round(statistics.mean(values), 4)
            row[key + "_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        table[name] = row
    return table


def smooth(xs: list[float], k: int = 5) -> list[float]:
    """Trailing mean over k steps: one step's reward is the mean of 16 samples of random prompts."""
    return [statistics.mean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def plot(runs: list[dict], sft_chrf: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(RECIPES):
        mine = [r for r in runs if r["estimator"] == name]
        if not mine:
            continue
        color = f"C{i}"
        for r in mine:
            ax1.plot([c["wall_s"] for c in r["curve"]], smooth([c["reward"] for c in r["curve"]]), color=color,
                     alpha=0.25)
        n = min(len(r["curve"]) for r in mine)  # mean over seeds, step by step
        ax1.plot([statistics.mean(r["curve"][s]["wall_s"] for r in mine) for s in range(n)],
                 smooth([statistics.mean(r["curve"][s]["reward"] for r in mine) for s in range(n)]),
                 color=color, lw=2, label=name)
        ax2.scatter([r["wall_s"] for r in mine], [r["chrf_test"] for r in mine], color=color, label=name)
    ax2.axhline(sft_chrf, color="gray", ls="--", label="SFT start")
    ax1.set(xlabel="training wall time (s)", ylabel="reward (sentence chrF / 100)",
            title="Reward, trailing mean of 5 steps (thin: seeds; thick: mean)")
    ax2.set(xlabel="training wall time (s)", ylabel="held-out chrF", title="Held-out chrF at the end")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="SFT model folder (a run's sft/ or its final/)")
    ap.add_argument("--estimators", default=",".join(RECIPES), help="comma-separated subset of " + ",".join(RECIPES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=10_000, help="generated response tokens per run")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=BASE["lr"], help="policy learning rate (the preset's by default)")
    ap.add_argument("--test", type=int, default=130, help="held-out test sentences scored at the end (130: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1,000 tokens, 8 test sentences")
    ap.add_argument("--out", default="benchmarks/estimators", help="output path without extension")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.tokens, args.test = 1, 1_000, 8
    torch.set_num_threads(1)
    train = list(load_shipped_corpus("train"))
    test = list(load_shipped_corpus("test"))[: args.test]
    sft_model, sft_tok = load_sft(args.sft)
    sft_chrf = evaluate_translation(sft_model, sft_tok, test, max_new_tokens=args.max_new_tokens)["chrf"]
    print(f"SFT held-out chrF on {len(test)} test sentences: {sft_chrf:.2f}")
    t0 = time.time()
    runs = [run_one(name, seed, args, train, test)
            for seed in range(args.seeds) for name in args.estimators.split(",")]
    out = Path(args.out)
    result = {
        "command": "uv run python benchmarks/estimators.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "quick", "sft")),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread",
        "total_s": round(time.time() - t0),
        "sft": str(args.sft), "sft_chrf_test": sft_chrf, "test_sentences": len(test),
        "base": {**BASE, "lr": args.lr}, "recipes": RECIPES, "summary": summarise(runs), "runs": runs,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(runs, sft_chrf, out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
