"""Peak memory and time of the log-prob passes, before and after chunking, on a wide-vocabulary tiny model.

    uv run python benchmarks/logprob_memory.py                  # table on stderr, JSON on the last line
    uv run python benchmarks/logprob_memory.py --vocab 65536    # wider

A randomly initialised Llama-style model (2 layers, hidden 64) with a 32k vocabulary: the output head
and the `[B, T, V]` logits are then most of a pass's memory, as with Gemma's 262k vocabulary. LoRA
policy, value head on the policy's trunk (`value_head_on_policy`), adapter-off reference. Cases:

    update_before   the update's old pass: the policy's forward, full fp32 log_softmax + gather +
                    entropy, then the value model's own trunk pass; backward of both losses
    update_recompute  `logprobs_and_values`: one trunk pass, head and log-softmax in chunks whose
                    logits the backward recomputes (`KEEP_LOGITS_BYTES = 0`); the same backward
    update_now      the same with the default `KEEP_LOGITS_BYTES` (1 GiB): the backward reuses the
                    forward's chunk logits when they fit, one head matmul fewer
    ref_before      no-grad reference pass, full fp32 log_softmax + gather
    ref_now         no-grad `response_logprobs(Reference(policy))`, chunked

Each case runs in its own process (as benchmarks/memory.py): peak RSS (VmHWM) above the RSS after the
models are built, and the median seconds of the pass.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _common import child_env, reset_peak, rss_mib, run_child

CASES = ("update_before", "update_recompute", "update_now", "ref_before", "ref_now")


def before_logprobs(model, ids, mask, n, temperature, with_entropy):
    """response_logprobs as it was before chunking: the whole `[B, T, V]` fp32 log-softmax at once."""
    import torch.nn.functional as F

    from ppolab.models.builders import position_ids_from_mask

    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False,
                logits_to_keep=n + 1)
    logp_all = F.log_softmax(out.logits[:, -n - 1 : -1].float() / temperature, dim=-1)
    logprobs = logp_all.gather(-1, ids[:, -n:, None]).squeeze(-1)
    return (logprobs, -(logp_all.exp() * logp_all).sum(-1)) if with_entropy else logprobs


def child(args) -> dict:
    import gc

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ppolab.config import ModelConfig
    from ppolab.models import Reference, value_head_on_policy, wrap_lora
    from ppolab.token_attribution import logprobs_and_values, response_logprobs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import ppolab.token_attribution.logprobs as lp_mod

    if args.child == "update_recompute":
        lp_mod.KEEP_LOGITS_BYTES = 0
    if args.chunk_elements:
        lp_mod.CHUNK_ELEMENTS = args.chunk_elements
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    policy = wrap_lora(LlamaForCausalLM(cfg), ModelConfig(lora=True, lora_r=8, lora_dropout=0.0))
    value = value_head_on_policy(policy)
    for p in value.head.parameters():  # a trained head, so the value loss reaches the trunk
        torch.nn.init.normal_(p, std=0.1)
    ref = Reference(policy)
    B, P, T = args.batch, args.prompt_len, args.response_len
    ids = torch.randint(0, args.vocab, (B, P + T))
    mask = torch.ones_like(ids)
    case = args.child

    def run():
        if case.startswith("ref"):
            with torch.no_grad():
                if case == "ref_before":
                    with policy.disable_adapter():
                        before_logprobs(policy, ids, mask, T, 0.7, False)
                else:
                    response_logprobs(ref, ids, mask, T, 0.7)
            return
        policy.train()
        if case == "update_before":
            lp, ent = before_logprobs(policy, ids, mask, T, 0.7, True)
            v = value(ids, mask)[:, -T - 1 : -1]
        else:
            lp, ent, v = logprobs_and_values(policy, value, ids, mask, T, 0.7, with_entropy=True)
        loss = -lp.mean() + 0.1 * v.pow(2).mean() - 0.01 * ent.mean()
        loss.backward()
        policy.zero_grad(set_to_none=True)
        value.zero_grad(set_to_none=True)

    run()  # warm-up: first-call allocations are not the pass's
    gc.collect()
    reset_peak()
    base_mib, _ = rss_mib()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    _, peak_mib = rss_mib()
    return {"case": case, "peak_mib": round(peak_mib - base_mib, 1), "seconds": round(statistics.median(times), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-elements", type=int, default=0, help="override CHUNK_ELEMENTS (0: the default)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    env = child_env()  # every tensor >= 128 KiB in its own mapping, so RSS counts live tensors
    rows = {}
    for case in args.cases.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", case] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "cases")]
        rows[case] = run_child(cmd, env, what=case)
        print(f"{case:<14} peak {rows[case]['peak_mib']:8.1f} MiB  {rows[case]['seconds']:.3f} s", file=sys.stderr)
    fp32_btv = args.batch * args.response_len * args.vocab * 4 / 2**20
    ratio = lambda a, b: round(rows[a][k] / rows[b][k], 3) if a in rows and b in rows else None  # noqa: E731
    out = {"model": f"llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, LoRA r8, fp32, CPU",
           "batch": args.batch, "prompt_tokens": args.prompt_len, "response_tokens": args.response_len,
           "chunk_elements": args.chunk_elements or None, "one_fp32_BTV_mib": round(fp32_btv, 1), "cases": rows}
    for k, what in (("peak_mib", "peak"), ("seconds", "time")):
        out[f"update_{what}_ratio_now_over_before"] = ratio("update_now", "update_before")
        out[f"ref_{what}_ratio_now_over_before"] = ratio("ref_now", "ref_before")
    k = "seconds"
    out["update_time_ratio_now_over_recompute"] = ratio("update_now", "update_recompute")
    print(json.dumps(out))

if __name__ == "__main__":
    main()
