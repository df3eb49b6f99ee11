"""The quantised CPU samplers (`GenerationConfig.sampler_quantization` "int8", "fp16") against fp32.

    nice -n 10 uv run --extra gemma python benchmarks/cpu_sampler.py               # Gemma 3 270M
    uv run python benchmarks/cpu_sampler.py --tiny --steps 2                        # smoke test

Gemma 3 270M (`pretrained_path("gemma3-270m")`), LoRA r16 on q/k/v/o, the Arabic output trim,
a value head on the policy's trunk, 1 torch thread; few-shot EN->AR prompts of the shipped corpus.

1. sampling: `SequenceGenerator.sample` of batch B x T tokens (no early stop), fp32 policy vs the
   quantised copies, interleaved rounds, median seconds -> response tokens/s and the ratio; each
   copy's refresh (re-quantising the merged adapted layers) timed apart;
2. mismatch: one rollout from each copy, stopping at the newline as PPO does: the
   `mismatch/*` statistics between the copy's log-probs and the policy's recomputed ones (and the
   fp32 sampler's against a recompute, the floor of rounding);
3. PPO: `--steps` updates of B rollouts from the same seed and prompts, fp32 vs each copy (with
   `--correction`, "tis" by default): per step the reward (sentence chrF against the reference,
   /10, fixed), chrF, KL per token, the mismatch and seconds.

Prints the figures and ratios; writes the JSON (`--out`, default benchmarks/cpu_sampler_gemma.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.ao.quantization's notice
warnings.filterwarnings("ignore", category=UserWarning, message=".*quantize_per_tensor.*")

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig  # noqa: E402
from ppolab.data import build_prompt  # noqa: E402
from ppolab.data.loaders import load_shipped_corpus  # noqa: E402
from ppolab.models import Reference, value_head_on_policy, wrap_lora  # noqa: E402
from ppolab.ppo import PPOTrainer  # noqa: E402
from ppolab.ppo.rollout_correction import mismatch_stats  # noqa: E402
from ppolab.reward.reference import ReferenceChrF  # noqa: E402
from ppolab.token_attribution import SequenceGenerator  # noqa: E402


def build_policy(args):
    torch.manual_seed(args.seed)
    if args.tiny:
        from ppolab.models import build_policy as tiny, build_tokenizer

        tok = build_tokenizer()
        mcfg = ModelConfig(arch="llama", lora=True, lora_r=16, lora_alpha=32, hidden_size=64, seed=args.seed)
        return tiny(mcfg, tok), tok
    from ppolab.models import load_causal_lm, load_tokenizer, pretrained_path
    from ppolab.models.vocab_trim import apply_vocab_trim

    path = str(pretrained_path("gemma3-270m"))
    mcfg = ModelConfig(policy_path=path, lora=True, lora_r=16, lora_alpha=32, vocab_trim="arabic",
                       lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), seed=args.seed)
    tok = load_tokenizer(path)
    policy = apply_vocab_trim(load_causal_lm(path, mcfg), tok, mcfg.vocab_trim)
    torch.manual_seed(args.seed)
    return wrap_lora(policy, mcfg), tok


def corpus_prompts(tok, n: int) -> tuple[list[str], dict[str, str]]:
    examples = [e for e in load_shipped_corpus("train", src="eng")][:n]
    prompts = [build_prompt(e.source, "eng", "arb", tok) for e in examples]
    return prompts, {p: e.target for p, e in zip(prompts, examples)}


def generation(args, kind: str | None, stop: bool = True) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=args.tokens, temperature=args.temperature, stop_at_eos=stop,
                            stop_at_newline=stop and not args.tiny, max_prompt_length=1024,
                            sampler_quantization=None if kind == "fp32" else kind)


def bench_sampling(args, policy, tok, prompts) -> dict:
    gens = {k: SequenceGenerator(policy, tok, generation(args, k, stop=False)) for k in ("fp32", *args.kinds)}
    ids, mask = gens["fp32"].encode_prompts(prompts[: args.batch])
    seconds = {k: [] for k in gens}
    policy.eval()
    with torch.no_grad():
        for k, g in gens.items():  # warm-up (first calls allocate, pack the weights)
            g.sample(ids, mask)
        for _ in range(args.repeats):
            for k, g in gens.items():
                torch.manual_seed(0)
                t0 = time.perf_counter()
                g.sample(ids, mask)
                seconds[k].append(time.perf_counter() - t0)
        refresh = {}
        for k in args.kinds:
            t0 = time.perf_counter()
            gens[k]._refresh_sampler(gens[k].sampler, policy)
            refresh[k] = time.perf_counter() - t0
    tokens = args.batch * args.tokens
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {"prompt_tokens_mean": float(mask.sum(-1).float().mean()), "batch": args.batch, "new_tokens": args.tokens,
           "seconds": seconds, "median_seconds": med,
           "tokens_per_s": {k: tokens / v for k, v in med.items()},
           "speedup": {k: med["fp32"] / med[k] for k in args.kinds}, "refresh_seconds": refresh}
    del gens
    return out


def bench_mismatch(args, policy, tok, prompts) -> dict:
    out = {}
    for name, cfg in ([(k, generation(args, k)) for k in args.kinds]
                      + [("fp32_vs_recompute", GenerationConfig(**{**vars(generation(args, "fp32")),
                                                                   "logprobs_from_sampling": False}))]):
        torch.manual_seed(args.seed)
        r = SequenceGenerator(policy, tok, cfg).generate(prompts[: args.batch])
        out[name] = {**mismatch_stats(r.logprobs, r.sampler_logprobs, r.mask), "tokens": int(r.mask.sum())}
    return out


def run_ppo(args, kind: str, correction: str) -> dict:
    policy, tok = build_policy(args)
    prompts, refs = corpus_prompts(tok, args.prompts)
    reward = ReferenceChrF(refs, center=0.0, scale=10.0)  # fixed: the two runs score alike
    value = value_head_on_policy(policy)
    cfg = PPOConfig(batch_size=args.batch, minibatch_size=args.batch // 2, ppo_epochs=2, lr=args.lr, kl_coef=0.05,
                    seed=args.seed, rollout_correction=correction)
    trainer = PPOTrainer(cfg, policy, Reference(policy), value, reward, tok, generation(args, kind))
    rng = random.Random(args.seed)
    steps = []
    for step in range(args.steps):
        batch = rng.sample(prompts, args.batch)
        t0 = time.perf_counter()
        s = trainer.ppo_step(batch)
        chrf = reward.chrf(batch, s["generated_texts"])
        steps.append({"step": step + 1, "seconds": time.perf_counter() - t0, "reward": s["score_mean"],
                      "chrf": statistics.mean(chrf), "kl_per_token": s["kl_per_token"],
                      "response_length": s["response_length"],
                      **{k: v for k, v in s.items() if k.startswith(("mismatch/", "rollout_correction/"))},
                      "timings": s["timings"]})
        print(f"  {kind} {correction} step {step + 1}: reward {s['score_mean']:.3f} chrF "
              f"{steps[-1]['chrf']:.2f} KL/token {s['kl_per_token']:.4f} "
              f"mismatch {s.get('mismatch/logprob_abs_mean', float('nan')):.4f} {steps[-1]['seconds']:.1f}s",
              flush=True)
    return {"sampler": kind, "rollout_correction": cfg.rollout_correction, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (smoke test of the script)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved sampling rounds (median)")
    ap.add_argument("--steps", type=int, default=6, help="PPO updates per side (0: no PPO comparison)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--lr", type=float, default=7e-5)
    ap.add_argument("--kinds", default="int8,fp16", help="sampler_quantization values against fp32")
    ap.add_argument("--correction", default="tis", choices=("none", "tis", "mis"), help="the quantised runs'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phases", default="sample,mismatch,ppo")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    out_path = Path(args.out or Path(__file__).parent / ("cpu_sampler_tiny.json" if args.tiny else
                                                         "cpu_sampler_gemma.json"))
    phases = args.phases.split(",")
    result = {"args": vars(args), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", "torch": torch.__version__,
              "started_load": os.getloadavg()}
    policy, tok = build_policy(args)
    prompts, _ = corpus_prompts(tok, args.prompts)
    if "sample" in phases:
        result["sampling"] = s = bench_sampling(args, policy, tok, prompts)
        print(f"sampling {args.batch} x {args.tokens} (prompts ~{s['prompt_tokens_mean']:.0f} tokens): fp32 "
              f"{s['tokens_per_s']['fp32']:.1f} tok/s; " + "; ".join(
                  f"{k} {s['tokens_per_s'][k]:.1f} tok/s = {s['speedup'][k]:.2f}x, refresh {s['refresh_seconds'][k]:.2f}s"
                  for k in args.kinds), flush=True)
    if "mismatch" in phases:
        result["mismatch"] = m = bench_mismatch(args, policy, tok, prompts)
        for k, v in m.items():
            print(f"mismatch {k}: " + ", ".join(f"{n.split('/')[-1]} {x:.4g}" for n, x in v.items()), flush=True)
    del policy
    if "ppo" in phases and args.steps:
        result["ppo"] = {"fp32": run_ppo(args, "fp32", "none")}
        for k in args.kinds:
            result["ppo"][k] = run_ppo(args, k, args.correction)
        for side in result["ppo"]:
            st = result["ppo"][side]["steps"]
            print(f"ppo {side}: mean reward {statistics.mean(s['reward'] for s in st):.3f}, chrF "
                  f"{statistics.mean(s['chrf'] for s in st):.2f}, final KL/token {st[-1]['kl_per_token']:.4f}, "
                  f"median step {statistics.median(s['seconds'] for s in st):.1f}s")
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    result["ended_load"] = os.getloadavg()
    out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
