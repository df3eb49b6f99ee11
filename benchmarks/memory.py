"""Peak host memory (RSS) of the PPO model set-ups, each built in its own process.

    uv run python benchmarks/memory.py                 # table on stderr, JSON on the last line
    uv run python benchmarks/memory.py --arch gemma2   # the same on a Gemma-2 configuration

A randomly initialised fp32 model of ~52M parameters (Llama-style: 8 layers, hidden 640, MLP 2560,
a 512-token vocabulary), large enough that weights (~200 MiB) dominate everything else a model
brings. Options:

    policy            (a)  full policy alone
    lora_policy            LoRA policy alone (the honest baseline for "the reference is free")
    full_plus_ref     (b)  full policy + deep-copied frozen reference
    lora_plus_ref     (c)  LoRA policy + reference = the same weights with the adapter disabled
    lora_ref_value    (d)  (c) + separate value model (`ValueModel.from_policy`: copied trunk)
    lora_ref_shared   (e)  (c) + value head on the policy's own trunk (`value_head_on_policy`)
    lora_ref_shared_rm (f) (e) + reward model on a separate backbone

Each option runs in a fresh subprocess so one option's freed memory cannot hide another's. The
child records RSS after `import torch, transformers` (the baseline), after building the models,
and the peak (VmHWM) after one PPO-shaped pass over a small batch: no-grad forwards of reference
and reward, and one forward + backward of the policy and value losses together, since the PPO
update back-propagates both (so a separate value trunk's gradients are counted; optimizer state
is not). Figures are MiB above the baseline, so the interpreter and libraries do not dilute the
ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from _common import child_env, reset_peak, rss_mib, run_child, tiny_model_config

OPTIONS = {
    "policy": "(a) full policy",
    "lora_policy": "(a') LoRA policy",
    "full_plus_ref": "(b) full policy + deep-copy ref",
    "lora_plus_ref": "(c) LoRA policy + adapter-off ref",
    "lora_ref_value": "(d) (c) + separate value (copied trunk)",
    "lora_ref_shared": "(e) (c) + value head on shared trunk",
    "lora_ref_shared_rm": "(f) (e) + reward model (own backbone)",
}


def child(args) -> dict:
    """Build one option, run one pass, return its memory figures (runs in its own process)."""
    import torch

    torch.set_num_threads(args.threads)
    from ppolab.config import ModelConfig
    from ppolab.models import (
        Reference, RewardModel, ValueModel, base_trunk, build_policy, build_tiny_causal_lm, build_tokenizer,
        value_head_on_policy,
    )
    from ppolab.token_attribution import response_logprobs

    tok = build_tokenizer(vocab_size=512)
    # Import every library a model build touches before taking the baseline, so it is in it.
    import gc

    import peft  # noqa: F401
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM  # noqa: F401

    gc.collect()
    reset_peak()
    base_mib, _ = rss_mib()

    opt = args.child
    lora = opt != "policy" and opt != "full_plus_ref"
    mcfg = tiny_model_config(args.layers, args.hidden, args.heads, intermediate=args.intermediate, arch=args.arch,
                             lora=lora, lora_r=8)
    policy = build_policy(mcfg, tok)
    ref = value = reward = None
    if opt not in ("policy", "lora_policy"):
        ref = Reference(policy)
    if opt == "lora_ref_value":
        value = ValueModel.from_policy(policy)
    elif opt in ("lora_ref_shared", "lora_ref_shared_rm"):
        value = value_head_on_policy(policy)
    if opt == "lora_ref_shared_rm":
        # A backbone of its own (another seed), used directly: no deep copy, no transient double.
        rm_lm = build_tiny_causal_lm(ModelConfig(**{**mcfg.__dict__, "lora": False, "seed": 1}), tok)
        reward = RewardModel(base_trunk(rm_lm), tokenizer=tok).eval()
        del rm_lm
    gc.collect()
    built_mib, built_peak_mib = rss_mib()

    torch.manual_seed(0)
    B, P, T = args.batch, args.prompt_len, args.response_len
    ids = torch.randint(4, len(tok), (B, P + T))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        if ref is not None:
            response_logprobs(ref, ids, mask, T)
        if reward is not None:
            reward.score_ids(ids, mask)
    policy.train()
    loss = response_logprobs(policy, ids, mask, T).mean()
    if value is not None:
        value.train()
        loss = loss + value(ids, mask)[:, -T - 1 : -1].pow(2).mean()
    loss.backward()
    after_mib, peak_mib = rss_mib()

    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    trainable = {p.data_ptr(): p.numel() for m in (policy, value) if m is not None for p in m.parameters()
                 if p.requires_grad}
    return {
        "option": opt,
        "policy_params_m": round(n_params(policy) / 1e6, 2),
        "trainable_params_m": round(sum(trainable.values()) / 1e6, 3),
        "baseline_mib": round(base_mib, 1),
        "built_mib": round(built_mib - base_mib, 1),
        "build_peak_mib": round(built_peak_mib - base_mib, 1),
        "after_pass_mib": round(after_mib - base_mib, 1),
        "peak_mib": round(peak_mib - base_mib, 1),
    }


def run_option(opt: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", opt, "--arch", args.arch,
           "--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads),
           "--intermediate", str(args.intermediate), "--batch", str(args.batch),
           "--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len),
           "--threads", str(args.threads)]
    # --malloc-default: glibc's own mmap threshold (see _common.MMAP_THRESHOLD for why it is fixed)
    return run_child(cmd, child_env(fixed_mmap_threshold=not args.malloc_default), what=f"option {opt}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("llama", "gemma2"), default="llama")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--heads", type=int, default=10)
    ap.add_argument("--intermediate", type=int, default=2560)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--options", default=",".join(OPTIONS), help="comma-separated subset of " + ", ".join(OPTIONS))
    ap.add_argument("--malloc-default", action="store_true",
                    help="keep glibc's adaptive mmap threshold (RSS then includes freed-but-cached memory)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    rows = {}
    for opt in args.options.split(","):
        rows[opt] = run_option(opt, args)
        r = rows[opt]
        print(f"{OPTIONS[opt]:<42} built {r['built_mib']:7.1f}  peak {r['peak_mib']:7.1f} MiB", file=sys.stderr)

    head = f"{'option':<42} {'params':>7} {'train':>7} {'built':>8} {'b.peak':>8} {'after':>8} {'peak':>8}"
    print("\n" + head + "\n" + "-" * len(head), file=sys.stderr)
    for opt, r in rows.items():
        print(f"{OPTIONS[opt]:<42} {r['policy_params_m']:6.1f}M {r['trainable_params_m']:6.2f}M "
              f"{r['built_mib']:8.1f} {r['build_peak_mib']:8.1f} {r['after_pass_mib']:8.1f} {r['peak_mib']:8.1f}",
              file=sys.stderr)
    print("(MiB above the post-import baseline; params/train = policy parameters / trainable parameters)",
          file=sys.stderr)

    def ratio(a: str, b: str, key: str = "peak_mib"):
        if a in rows and b in rows and rows[b][key] > 0:
            return round(rows[a][key] / rows[b][key], 3)
        return None

    ratios = {
        # The reference's cost under LoRA: against the LoRA policy alone (goal <= 1.15) ...
        "lora_policy_plus_ref_over_policy": ratio("lora_plus_ref", "lora_policy"),
        # ... and against the plain full policy alone (weights + full gradients).
        "lora_policy_plus_ref_over_full_policy": ratio("lora_plus_ref", "policy"),
        "full_policy_plus_ref_over_policy": ratio("full_plus_ref", "policy"),
        "lora_plus_ref_over_full_plus_ref": ratio("lora_plus_ref", "full_plus_ref"),
        "separate_value_over_lora": ratio("lora_ref_value", "lora_plus_ref"),
        "shared_value_over_lora": ratio("lora_ref_shared", "lora_plus_ref"),
        "shared_value_over_separate_value": ratio("lora_ref_shared", "lora_ref_value"),
        "reward_model_over_shared_value": ratio("lora_ref_shared_rm", "lora_ref_shared"),
        # Same ratios on resident memory after building only (weights, no pass).
        "built_lora_policy_plus_ref_over_policy": ratio("lora_plus_ref", "lora_policy", "built_mib"),
        "built_shared_value_over_lora": ratio("lora_ref_shared", "lora_plus_ref", "built_mib"),
        "built_separate_value_over_lora": ratio("lora_ref_value", "lora_plus_ref", "built_mib"),
    }
    print(json.dumps({
        "model": f"{args.arch} {args.layers} layers, hidden {args.hidden}, MLP {args.intermediate}, fp32, CPU",
        "batch": args.batch, "tokens": args.prompt_len + args.response_len,
        "mib": {opt: {k: r[k] for k in ("built_mib", "build_peak_mib", "after_pass_mib", "peak_mib")}
                for opt, r in rows.items()},
        "policy_params_m": next(iter(rows.values()))["policy_params_m"],
        "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
