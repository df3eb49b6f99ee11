"""Rollout speed on one GPU: the eager loop vs the static engine (CUDA graph) vs `generate()`.

    bash benchmarks/gpu_rollouts.sh                                   # one H200: under ~8 minutes
    uv run python benchmarks/gpu_rollouts.py --tiny --device cpu      # the CPU fallback, tiny sizes

Random-weight models from real configurations (no weights travel): the ~0.5B Gemma-2 layout of
benchmarks/gpu_check.py (full, and LoRA r16 on every linear layer) and Gemma 3 270M (its
config.json: 18 layers, hidden 640, 262k vocabulary), in bf16. For each at batch 16, 64, 256
(prompts of 24-32 tokens, left-padded; 64 new tokens; no early stop, so every engine decodes the
same number of steps): response tokens/s of `SequenceGenerator.sample` with engine="eager" and
engine="static" (its first call, which builds the cache and captures the graph, timed apart; at
the first batch size also uncaptured, PPOLAB_STATIC_GRAPH=0), and of transformers' `generate()` (sampling, the model's own dynamic cache); next to them the bandwidth
floor of one decoding step, (parameter bytes + KV-cache bytes read) / `--bandwidth` (H200: 4.8 TB/s),
with the KV read at its least (each row's prompt + half the response: what the eager loop attends
to on average) and as the static engine reads it (the whole preallocated length), and each engine's
step time as a multiple of the floor, and the sampler-trainer mismatch statistics of each engine's log-probs. Then one whole `ppo_step` per engine at batch 16 (warm-up step,
then a timed one) with seconds per phase. Prints a table on stderr and one JSON line on stdout.
Stops starting measurements after `--time-budget` seconds (what was skipped is listed).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

GEMMA3_270M = dict(  # config.json of pretrained_path("gemma3-270m") (the `gemma` extra), weights random
    vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
    num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=32768, rms_norm_eps=9.999999974752427e-07, sliding_window=512,
    layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3, attn_logit_softcapping=None,
    final_logit_softcapping=None, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    rope_parameters={"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                     "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
)
GEMMA3_TINY = dict(GEMMA3_270M, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   head_dim=16, query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"])
HALF_B = dict(n_layers=32, hidden_size=1024, n_heads=8, n_kv_heads=4, intermediate_size=4096)  # gpu_check.py's
TINY = dict(n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=128)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PHASES = ("merge", "generate", "policy_forward", "ref_forward", "value_forward", "reward_forward", "advantage",
          "update")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_policy(name: str, args, tok):
    """A random-weight causal LM (LoRA-wrapped for the *-lora names) on the device, in args.dtype."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from ppolab.config import ModelConfig
    from ppolab.models import build_tiny_causal_lm, wrap_lora

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(args.device):
        if name.startswith("gemma3"):
            cfg = Gemma3TextConfig(**(GEMMA3_TINY if args.tiny else GEMMA3_270M))
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        else:
            mcfg = ModelConfig(arch="gemma2", dtype=args.dtype, lora=name.endswith("lora"), lora_r=16,
                               lora_target_modules=LORA_TARGETS, **(TINY if args.tiny else HALF_B))
            model = build_tiny_causal_lm(mcfg, tok)
    model.to(args.device).eval()
    if name.endswith("lora"):
        model = wrap_lora(model, mcfg)
        torch.manual_seed(1)
        with torch.no_grad():  # a trained-looking adapter (peft starts lora_B at zero)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.01)
    return model


def prompt_batch(batch: int, args, vocab: int):
    """`[B, P]` random ids, rows of P-8..P tokens, left-padded (pad 0), and their mask."""
    g = torch.Generator().manual_seed(batch)
    lengths = torch.randint(args.prompt_tokens - 8, args.prompt_tokens + 1, (batch,), generator=g)
    ids = torch.randint(3, vocab, (batch, args.prompt_tokens), generator=g)
    mask = (torch.arange(args.prompt_tokens)[None] >= args.prompt_tokens - lengths[:, None]).long()
    return (ids * mask).to(args.device), mask.to(args.device)


def kv_bytes_per_token(model) -> int:
    from ppolab.token_attribution.static_cache import _text_config

    c = _text_config(model)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elt = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * elt  # K and V, every layer


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def timed_call(fn, repeats: int, results: list | None = None) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    if results is not None:
        results.append(out)
    return statistics.median(times)


def mismatch(policy, ids, mask, sampled, temperature) -> dict:
    """The sampler-trainer mismatch statistics of one `sample` result against the policy's recomputed
    log-probs (one full forward, as the trainer computes them)."""
    from ppolab.ppo.rollout_correction import mismatch_stats
    from ppolab.token_attribution import response_logprobs

    tokens, lps = sampled[0], sampled[1]
    full, fmask = torch.cat([ids, tokens], 1), torch.cat([mask, torch.ones_like(tokens)], 1)
    trainer = response_logprobs(policy, full, fmask, tokens.shape[1], temperature)
    return {k: float(f"{v:.3g}") for k, v in mismatch_stats(trainer, lps.float(), torch.ones_like(tokens)).items()}


def measure_sampling(name, policy, tok, batch, args) -> dict:
    from ppolab.config import GenerationConfig
    from ppolab.token_attribution import SequenceGenerator

    from ppolab.token_attribution.static_cache import _text_config

    T = args.new_tokens
    ids, mask = prompt_batch(batch, args, _text_config(policy).vocab_size)
    row = {"model": name, "batch": batch, "prompt_tokens": ids.shape[1], "new_tokens": T}
    gens = {}
    for engine in ("eager", "static"):
        cfg = GenerationConfig(max_new_tokens=T, temperature=0.7, stop_at_eos=False, engine=engine,
                               max_prompt_length=ids.shape[1])
        gens[engine] = SequenceGenerator(policy, tok, cfg, reference=policy)
    sampled = {"eager": [], "static": []}
    with torch.no_grad():
        row["eager_s"] = timed_call(lambda: gens["eager"].sample(ids, mask), 1, sampled["eager"])
        row["static_first_s"] = timed_call(lambda: gens["static"].sample(ids, mask), 1)  # builds + captures
        row["static_s"] = timed_call(lambda: gens["static"].sample(ids, mask), args.repeats, sampled["static"])
        for k in ("eager", "static"):  # how far each sampler's log-probs are from the trainer's
            row[f"{k}_mismatch"] = mismatch(policy, ids, mask, sampled[k][0], 0.7)
        (eng,) = gens["static"]._static_engines.values()
        row["static_graph"] = eng.graph is not None
        row["static_graph_error"] = eng.graph_error
        if args.device.startswith("cuda") and batch == int(args.batches.split(",")[0]):
            # The same fixed-shape step uncaptured: what the graph itself buys.
            os.environ["PPOLAB_STATIC_GRAPH"] = "0"
            try:
                nograph = SequenceGenerator(policy, tok, gens["static"].config, reference=policy)
                nograph.sample(ids, mask)
                row["static_nograph_s"] = round(timed_call(lambda: nograph.sample(ids, mask), 1), 4)
                row["static_nograph_tok_s"] = round(batch * T / row["static_nograph_s"], 1)
            finally:
                del os.environ["PPOLAB_STATIC_GRAPH"]
            del nograph
        gen_kw = dict(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                      max_new_tokens=T, min_new_tokens=T, pad_token_id=tok.pad_token_id)
        row["generate_s"] = timed_call(lambda: policy.generate(**gen_kw), 1)
    for k in ("eager", "static", "generate"):
        row[f"{k}_tok_s"] = round(batch * T / row[f"{k}_s"], 1)
    # The bandwidth floor of one step: every weight read once, plus the KV cache attended to.
    sampler = gens["static"].sampler  # LoRA: the merged copy (the eager loop reads the adapters too)
    per_tok = kv_bytes_per_token(sampler)
    kv_least = batch * (float(mask.sum(-1).float().mean()) + T / 2) * per_tok
    kv_static = batch * eng.max_len * per_tok
    pbytes = param_bytes(sampler)
    bw = args.bandwidth * 1e12
    row.update(param_gb=round(pbytes / 1e9, 3), kv_least_gb_per_step=round(kv_least / 1e9, 4),
               kv_static_gb_per_step=round(kv_static / 1e9, 4), static_cache_len=eng.max_len,
               floor_step_ms=round((pbytes + kv_least) / bw * 1e3, 4),
               floor_static_step_ms=round((pbytes + kv_static) / bw * 1e3, 4))
    row["floor_tok_s"] = round(batch / ((pbytes + kv_least) / bw), 1)
    for k in ("eager", "static", "generate"):
        row[f"{k}_step_ms"] = round(row[f"{k}_s"] / T * 1e3, 3)
        row[f"{k}_x_floor"] = round(row[f"{k}_step_ms"] / row["floor_step_ms"], 1)
    for k in ("eager_s", "static_first_s", "static_s", "generate_s"):
        row[k] = round(row[k], 4)
    del gens, eng
    return row


def length_reward(prompts, responses):
    return [min(len(r), 64) / 64 for r in responses]


def measure_ppo_step(name, policy, tok, engine, args) -> dict:
    """One warm-up step and one timed step of PPOTrainer at --ppo-batch, value head on the policy's trunk."""
    from ppolab.config import GenerationConfig, PPOConfig
    from ppolab.models import Reference, value_head_on_policy
    from ppolab.ppo import PPOTrainer

    value = value_head_on_policy(policy)
    cfg = PPOConfig(batch_size=args.ppo_batch, minibatch_size=args.ppo_batch // 2, ppo_epochs=2, lr=1e-6)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.7, stop_at_eos=False, engine=engine)
    trainer = PPOTrainer(cfg, policy, Reference(policy), value, length_reward, tok, gen)
    prompts = [f"Translate English to Arabic: sentence number {i} says the train leaves at nine."
               for i in range(args.ppo_batch)]
    trainer.ppo_step(prompts)  # warm-up (the static engine builds its cache and graph here)
    sync()
    t0 = time.perf_counter()
    stats = trainer.ppo_step(prompts)
    sync()
    step_s = time.perf_counter() - t0
    phases = {k: round(stats["timings"].get(k, 0.0), 4) for k in PHASES if k in stats["timings"]}
    largest = max(phases, key=phases.get)
    del trainer, value
    return {"model": name, "engine": engine, "batch": args.ppo_batch, "new_tokens": args.new_tokens,
            "ppo_step_s": round(step_s, 3), "phase_s": phases, "largest_phase": largest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--tiny", action="store_true", help="tiny models (the CPU smoke test)")
    ap.add_argument("--models", default="gemma2-0.5b,gemma2-0.5b-lora,gemma3-270m")
    ap.add_argument("--batches", default="16,64,256")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed static calls (median)")
    ap.add_argument("--ppo-batch", type=int, default=16)
    ap.add_argument("--no-ppo", action="store_true")
    ap.add_argument("--bandwidth", type=float, default=4.8, help="TB/s of the card (H200 4.8, H100 SXM 3.35)")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds; no new measurement after it")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_rollouts: no CUDA device is visible; pass --tiny --device cpu for the CPU path", file=sys.stderr)
        sys.exit(2)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("PPOLAB_THREADS", "1")))
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    import transformers

    from ppolab.models import build_tokenizer

    tok = build_tokenizer(vocab_size=512)
    out = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "transformers": transformers.__version__, "dtype": args.dtype,
           "tiny": args.tiny, "bandwidth_tb_s": args.bandwidth, "sampling": [], "ppo_step": [], "skipped": []}
    batches = [int(b) for b in args.batches.split(",")]
    for name in args.models.split(","):
        def over():
            return time.perf_counter() - t_start > args.time_budget

        if over():
            out["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        policy = build_policy(name, args, tok)
        print(f"== {name}: built in {time.perf_counter() - t0:.1f}s, {param_bytes(policy) / 1e9:.2f} GB",
              file=sys.stderr)
        for b in batches:
            if over():
                out["skipped"].append(f"{name} batch {b}")
                continue
            try:
                row = measure_sampling(name, policy, tok, b, args)
            except Exception as e:  # a failure (memory at batch 256, say) is a result, not the end
                row = {"model": name, "batch": b, "error": f"{type(e).__name__}: {e}"}
            out["sampling"].append(row)
            print(json.dumps(row), file=sys.stderr)
            gc.collect()
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        for engine in ("eager", "static"):
            if args.no_ppo or over():
                out["skipped"].append(f"{name} ppo_step {engine}")
                continue
            try:
                row = measure_ppo_step(name, policy, tok, engine, args)
            except Exception as e:
                row = {"model": name, "engine": engine, "error": f"{type(e).__name__}: {e}"}
            out["ppo_step"].append(row)
            print(json.dumps(row), file=sys.stderr)
        del policy
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    print(f"\n{'model':<18} {'batch':>5} {'eager':>9} {'static':>9} {'generate':>9} {'floor':>10}  tok/s "
          f"(static x floor)", file=sys.stderr)
    for r in out["sampling"]:
        if "error" not in r:
            print(f"{r['model']:<18} {r['batch']:>5} {r['eager_tok_s']:>9} {r['static_tok_s']:>9} "
                  f"{r['generate_tok_s']:>9} {r['floor_tok_s']:>10}  ({r['static_x_floor']}x, graph "
                  f"{r['static_graph']})", file=sys.stderr)
    line = json.dumps(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
