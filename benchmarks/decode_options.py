"""Decoding-step options on a real model: the dynamic KV cache ppolab's sampler uses, a static cache,
and a static cache with `torch.compile` of the decoding step (issue #13, CPU rollouts).

    uv run --extra gemma python benchmarks/decode_options.py                 # Gemma 3 270M, trimmed head
    uv run --extra gemma python benchmarks/decode_options.py --batch 16 --new 48 --repeats 3

Each variant runs the same loop as `SequenceGenerator.sample` (trunk forward over the cache, the
trimmed head's kept columns, sampling at temperature 1) on the same left-padded prompts with the
same seed, interleaved `--repeats` times; tokens/s is batch x new tokens / wall seconds of the
loop (prefill included). Compilation time is reported apart and not counted in tokens/s. The
variants must sample the same tokens (checked: `same_tokens`), else their speed means nothing.
JSON on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=32, help="new tokens per row (no early stop)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="dynamic,static,static+compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import StaticCache

    from ppolab.config import ModelConfig
    from ppolab.data import build_prompt, load_shipped_corpus
    from ppolab.models.builders import base_trunk, left_pad, position_ids_from_mask
    from ppolab.sft import load_sft
    from ppolab.token_attribution.generator import kv_cache_kwargs, sample_next_token

    model, tok = load_sft(args.model, ModelConfig(vocab_trim="arabic"))
    model.eval()
    trunk, head = base_trunk(model), model.get_output_embeddings()
    rows_w, keep = head.rows, head.keep_ids
    examples = load_shipped_corpus("train")[: args.batch]
    prompts = [tok(build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tok), add_special_tokens=False)["input_ids"]
               for ex in examples]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    B, P = ids.shape
    L = P + args.new

    def loop(kind: str, step=None):
        torch.manual_seed(0)
        pos = position_ids_from_mask(mask)
        if kind == "dynamic":
            out = trunk(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            cache_kw, m = kv_cache_kwargs(out), mask
        else:
            cache = StaticCache(config=model.config, max_cache_len=L)
            # The mask spans the whole cache from the start (causality hides the future), so every
            # decoding step has the same shapes and a compiled step never recompiles.
            m = torch.cat([mask, mask.new_ones(B, args.new)], 1)
            out = trunk(input_ids=ids, attention_mask=m, position_ids=pos, cache=cache, use_cache=True,
                        cache_position=torch.arange(P))
        h = out.last_hidden_state[:, -1]
        next_pos = pos[:, -1:] + 1
        tokens = []
        for t in range(args.new):
            column = sample_next_token(F.linear(h, rows_w), 1.0)
            token = keep[column]
            tokens.append(token)
            if t == args.new - 1:
                break
            if kind == "dynamic":
                m = torch.cat([m, m.new_ones(B, 1)], 1)
                out = trunk(input_ids=token[:, None], attention_mask=m, position_ids=next_pos, use_cache=True,
                            **cache_kw)
                cache_kw = kv_cache_kwargs(out)
                h = out.last_hidden_state[:, -1]
            else:
                h = step(token[:, None], m, next_pos, cache, torch.tensor([P + t]))
            next_pos = next_pos + 1
        return torch.stack(tokens, 1)

    def eager_step(token, m, p, cache, cache_position):
        return trunk(input_ids=token, attention_mask=m, position_ids=p, cache=cache, use_cache=True,
                     cache_position=cache_position).last_hidden_state[:, -1]

    variants = [v for v in args.variants.split(",") if v]
    steps = {"dynamic": None, "static": eager_step}
    compile_s = None
    results: dict[str, list[float]] = {v: [] for v in variants}
    outputs = {}
    with torch.no_grad():
        if "static+compile" in variants:
            steps["static+compile"] = torch.compile(eager_step, dynamic=False)
            t0 = time.perf_counter()
            loop("static", steps["static+compile"])  # first call compiles
            compile_s = time.perf_counter() - t0
        for _ in range(args.repeats):
            for v in variants:
                t0 = time.perf_counter()
                outputs[v] = loop("dynamic" if v == "dynamic" else "static", steps[v])
                results[v].append(time.perf_counter() - t0)
    base = min(results[variants[0]])
    summary = {v: {"seconds": round(min(s), 3), "tokens_per_s": round(B * args.new / min(s), 2),
                   "speedup_vs_" + variants[0]: round(base / min(s), 3)} for v, s in results.items()}
    same = all(torch.equal(outputs[v], outputs[variants[0]]) for v in variants)
    for v, r in summary.items():
        print(f"{v:>16}: {r['seconds']:.2f} s  {r['tokens_per_s']:.1f} tok/s  x{list(r.values())[2]:.2f}")
    print(json.dumps({"model": args.model, "batch": B, "prompt_tokens": P, "new_tokens": args.new,
                      "threads": args.threads, "repeats": args.repeats, "variants": summary,
                      "compile_seconds": None if compile_s is None else round(compile_s, 1),
                      "same_tokens": same}))


if __name__ == "__main__":
    main()
