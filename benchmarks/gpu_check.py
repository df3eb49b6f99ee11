"""One GPU sanity run of `PPOTrainer.ppo_step` on a ~0.5B-parameter Gemma-2 in bfloat16.

    uv run python benchmarks/gpu_check.py                              # full fine-tuning
    uv run python benchmarks/gpu_check.py --lora --gradient-checkpointing
    uv run --extra quant python benchmarks/gpu_check.py --4bit         # QLoRA (needs bitsandbytes)
    uv run python benchmarks/gpu_check.py --tiny --device cpu          # the same code path, on a CPU

The model is randomly initialised from a configuration (no download): Gemma-2 layout, 32 layers,
hidden 1024, 8 query / 4 key-value heads of 128, MLP 4096 (~0.50B parameters with the small
in-memory tokenizer's vocabulary). It prints the seconds and tokens/s of every phase of the
step (`stats["timings"]`) and the peak GPU memory (`torch.cuda.max_memory_allocated`), with a
JSON summary on the last line. One warm-up step, then `--steps` timed steps; steps stop early
once `--time-budget` seconds have gone, so the run ends within about five minutes.

Token counts behind each rate (B rollouts, P padded prompt tokens, T response tokens; sampling
does not stop at EOS so every step has the same shape):
    generate                       B*T sampled tokens
    policy/ref/value/reward_forward B*(P+T) tokens scored, one no-grad forward
    advantage                      B*T response tokens
    update                         ppo_epochs*B*(P+T) tokens through forward+backward of
                                   policy and value, plus the optimizer steps
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.models import (
    Reference, RewardModel, ValueModel, base_trunk, build_tiny_causal_lm, build_tokenizer, load_causal_lm,
    value_head_on_policy, wrap_lora,
)
from ppolab.ppo import PPOTrainer

# ~0.50B parameters: per layer 3.1M attention (q, o 1024x1024; k, v 1024x512) + 12.6M MLP.
HALF_B = dict(n_layers=32, hidden_size=1024, n_heads=8, n_kv_heads=4, intermediate_size=4096)
TINY = dict(n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=128)
PHASES = ("generate", "policy_forward", "ref_forward", "value_forward", "reward_forward", "advantage", "update")


def fail(msg: str, code: int = 2):
    print(f"gpu_check: {msg}", file=sys.stderr)
    sys.exit(code)


def check_device(args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("no CUDA device is visible (torch.cuda.is_available() is False; torch "
             f"{torch.__version__}, CUDA build {torch.version.cuda}). Run this on a GPU machine, "
             "or pass --tiny --device cpu to check the code path on the CPU.")
    if args.four_bit:
        if device.type != "cuda":
            fail("--4bit needs a CUDA device (bitsandbytes)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            fail("--4bit needs bitsandbytes: `uv sync --extra quant` (or `uv run --extra quant ...`)")
    return device


def enable_checkpointing(model) -> None:
    # transformers 5 renamed gradient_checkpointing_enable; its default is non-reentrant
    # checkpointing, which also works with a frozen (LoRA) base whose inputs need no grad.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def build_models(args, device: torch.device, tok):
    """Policy (optionally LoRA / 4-bit), reference, value and reward, all on `device`."""
    shape = TINY if args.tiny else HALF_B
    mcfg = ModelConfig(
        arch="gemma2", dtype=args.dtype, lora=args.lora, lora_r=args.lora_r,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        gradient_checkpointing=args.gradient_checkpointing, load_in_4bit=args.four_bit, **shape,
    )
    if args.four_bit:
        # bitsandbytes quantizes while loading a checkpoint: save the random bf16 model once,
        # then load it through the library's own path (load_causal_lm with load_in_4bit).
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_causal_lm(mcfg, tok).save_pretrained(tmp)
            base = load_causal_lm(tmp, mcfg)  # device_map="auto"; checkpointing set by prepare_model_for_kbit_training
    else:
        # Built directly on the device (the factory functions follow the default-device context),
        # so half a billion parameters are not initialised on the CPU first; `.to` is then a no-op
        # kept for safety.
        with torch.device(device):
            base = build_tiny_causal_lm(mcfg, tok)
        base.to(device)
        if args.gradient_checkpointing:
            enable_checkpointing(base)
    policy = wrap_lora(base, mcfg) if args.lora else base
    ref = Reference(policy)  # LoRA: the same weights with the adapter off; else a frozen deep copy
    if args.value == "shared":
        value = value_head_on_policy(policy)  # places its head on the trunk's device itself
    else:
        # ValueModel builds its head on the CPU whatever the backbone's device: move it.
        value = ValueModel.from_policy(policy).to(device)
    reward_cfg = ModelConfig(**{**mcfg.__dict__, "lora": False, "load_in_4bit": False, "seed": 1,
                                "n_layers": min(args.reward_layers, mcfg.n_layers)})
    with torch.device(device):
        reward_lm = build_tiny_causal_lm(reward_cfg, tok)
    reward = RewardModel(base_trunk(reward_lm), tokenizer=tok).to(device).eval()  # head/buffers: CPU-built
    return mcfg, policy, ref, value, reward


def describe_placement(policy, ref, value, reward) -> dict:
    """Devices and dtypes actually in use, so a wrong placement shows in the output."""
    def devs(m):
        return sorted({str(p.device) for p in m.parameters()} | {str(b.device) for b in m.buffers()})

    def dtypes(m):
        return sorted({str(p.dtype).replace("torch.", "") for p in m.parameters()})

    out = {"policy_devices": devs(policy), "policy_dtypes": dtypes(policy),
           "value_head_device": devs(value.head), "reward_devices": devs(reward)}
    if getattr(ref, "model", None) is not None:
        out["ref_devices"] = devs(ref.model)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model instead of ~0.5B (CPU smoke test)")
    ap.add_argument("--lora", action="store_true", help="LoRA policy (r=--lora-r on attention and MLP)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--4bit", dest="four_bit", action="store_true", help="QLoRA: 4-bit base (implies --lora)")
    ap.add_argument("--value", choices=("shared", "separate"), default="shared",
                    help="value head on the policy's trunk, or a separate value model (copied trunk)")
    ap.add_argument("--reward-layers", type=int, default=4, help="layers of the separate reward backbone")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--time-budget", type=float, default=200.0, help="seconds; no new step starts after it")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.four_bit:
        args.lora = True  # a 4-bit base cannot be trained; only the adapter can
        if args.value == "separate":
            fail("--4bit with --value separate would deep-copy a quantized trunk; use --value shared")
    device = check_device(args)
    if device.type == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))

    tok = build_tokenizer(vocab_size=512)
    t0 = time.perf_counter()
    mcfg, policy, ref, value, reward = build_models(args, device, tok)
    build_s = time.perf_counter() - t0
    # Stored elements of the trunk (LoRA adapters included; a 4-bit weight stores two values per element).
    n_params = sum(p.numel() for p in base_trunk(policy).parameters())
    placement = describe_placement(policy, ref, value, reward)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        weights_gib = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()

    cfg = PPOConfig(batch_size=args.batch, minibatch_size=args.minibatch, ppo_epochs=args.epochs, lr=1e-5)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.7, stop_at_eos=False)
    trainer = PPOTrainer(cfg, policy, ref, value, reward, tok, gen)
    prompts = [f"Translate English to Arabic: sentence number {i} says the train leaves at nine."
               for i in range(args.batch)]
    P = trainer.generator.encode_prompts(prompts)[0].shape[1]
    T = args.new_tokens
    tokens = {"generate": args.batch * T, "advantage": args.batch * T, "update": args.epochs * args.batch * (P + T)}
    for k in ("policy_forward", "ref_forward", "value_forward", "reward_forward"):
        tokens[k] = args.batch * (P + T)

    print(f"device {torch.cuda.get_device_name(device) if on_cuda else 'cpu'}, torch {torch.__version__}, "
          f"policy trunk {n_params / 1e6:.1f}M params, {mcfg.dtype}, lora={args.lora}, 4bit={args.four_bit}, "
          f"grad-ckpt={args.gradient_checkpointing}, value={args.value}; built in {build_s:.1f}s", file=sys.stderr)
    print(f"placement: {json.dumps(placement)}", file=sys.stderr)

    step_times, phase_runs, last = [], [], None
    for i in range(args.steps + 1):
        if i > 0 and time.perf_counter() - t_start > args.time_budget:
            print(f"time budget {args.time_budget:.0f}s reached after {i - 1} timed step(s)", file=sys.stderr)
            break
        t0 = time.perf_counter()
        last = trainer.ppo_step(prompts)
        dt = time.perf_counter() - t0
        label = "warm-up" if i == 0 else f"step {i}"
        print(f"{label}: {dt:.2f}s  policy_loss {last['policy_loss']:.4f}  value_loss {last['value_loss']:.4f}  "
              f"kl {last['kl']:.4f}", file=sys.stderr)
        if i > 0:
            step_times.append(dt)
            phase_runs.append(last["timings"])
    if not phase_runs:  # only the warm-up ran: report it rather than nothing
        phase_runs, step_times = [last["timings"]], [sum(last["timings"].values())]

    phases = {k: sum(r.get(k, 0.0) for r in phase_runs) / len(phase_runs) for k in PHASES}
    print(f"\n{'phase':<16} {'seconds':>9} {'tokens':>8} {'tokens/s':>11}", file=sys.stderr)
    for k in PHASES:
        rate = tokens[k] / phases[k] if phases[k] > 0 else float("nan")
        print(f"{k:<16} {phases[k]:9.3f} {tokens[k]:8d} {rate:11.1f}", file=sys.stderr)
    step_s = sum(step_times) / len(step_times)
    print(f"{'ppo_step':<16} {step_s:9.3f} {args.batch * T:8d} {args.batch * T / step_s:11.1f}  (response tokens)",
          file=sys.stderr)
    result = {
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "model": f"gemma2 {mcfg.n_layers}x{mcfg.hidden_size}, MLP {mcfg.intermediate_size}",
        "trunk_params_m": round(n_params / 1e6, 1), "dtype": mcfg.dtype, "lora": args.lora, "4bit": args.four_bit,
        "gradient_checkpointing": args.gradient_checkpointing, "value": args.value,
        "batch": args.batch, "prompt_tokens": P, "response_tokens": T, "ppo_epochs": args.epochs,
        "timed_steps": len(step_times), "ppo_step_s": round(step_s, 3),
        "response_tokens_per_s": round(args.batch * T / step_s, 1),
        "phase_s": {k: round(v, 4) for k, v in phases.items()},
        "phase_tokens_per_s": {k: round(tokens[k] / v, 1) for k, v in phases.items() if v > 0},
        "build_s": round(build_s, 1), "total_s": round(time.perf_counter() - t_start, 1),
    }
    if on_cuda:
        result["weights_gib"] = round(weights_gib, 3)
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        print(f"GPU memory: models {weights_gib:.2f} GiB after build; peak allocated "
              f"{result['peak_allocated_gib']:.2f} GiB, reserved {result['peak_reserved_gib']:.2f} GiB",
              file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
