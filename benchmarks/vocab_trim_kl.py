"""What the output-vocabulary trim (`ModelConfig.vocab_trim="arabic"`) does to the KL that PPO measures.

    uv run --extra gemma python benchmarks/vocab_trim_kl.py --policy RUN/ppo_model_coldstart --reference RUN/sft

Samples `--n` responses of the trained policy with the trimmed head (as the gemma-cpu PPO stage
samples them) on training prompts of both directions, then reads policy and reference with the full
262k-row head and with the trimmed one (the kept columns of the same logits, renormalised) at every
response position, and prints, per token, averaged over the responses' valid tokens:
  kl_exact      KL(policy || reference) summed over the whole distribution (full vs trimmed)
  kl_k1         log p_policy - log p_reference of the sampled token (PPO's k1; full vs trimmed)
  mass_outside  the full-head policy's (and reference's) probability on tokens the trim drops
JSON on the last line. The trim changes the KL only through the mass it cuts off: when that mass is
small, PPO's KL penalty is the same quantity with or without the trim.
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
    ap.add_argument("--policy", required=True, help="trained policy folder (e.g. RUN/ppo_model_coldstart)")
    ap.add_argument("--reference", required=True, help="its reference (e.g. RUN/sft, or gemma3-270m)")
    ap.add_argument("--n", type=int, default=16, help="responses sampled")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=4, help="rows per forward (the full logits are [b, T, 262k])")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from ppolab.config import GenerationConfig, ModelConfig
    from ppolab.data import build_prompt, load_shipped_corpus, stops_at_newline
    from ppolab.models.builders import position_ids_from_mask
    from ppolab.models.vocab_trim import arabic_output_token_ids, trim_output_vocabulary
    from ppolab.sft import load_sft
    from ppolab.token_attribution.generator import SequenceGenerator, response_mask

    t0 = time.time()
    full = ModelConfig(vocab_trim=None)
    policy, tok = load_sft(args.policy, full)
    reference, _ = load_sft(args.reference, full)
    keep = torch.tensor(arabic_output_token_ids(tok))
    examples = load_shipped_corpus("train")
    half = args.n // 2
    chosen = [ex for ex in examples if ex.src_lang == "eng"][:half] + [ex for ex in examples if ex.src_lang == "fra"][:args.n - half]
    prompts = [build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tok) for ex in chosen]

    # Sample as PPO does: the trimmed head (a copy of the policy's head rows; undone after).
    head = policy.get_output_embeddings()
    trim_output_vocabulary(policy, keep)
    gen = SequenceGenerator(policy, tok, GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=1.0,
                                                          stop_at_newline=stops_at_newline(tok),
                                                          max_prompt_length=512), reference=reference)
    with torch.no_grad():
        prompt_ids, prompt_mask = gen.encode_prompts(prompts)
        response, _, _ = gen.sample(prompt_ids, prompt_mask)
    policy.set_output_embeddings(head)
    stops = gen.stop_ids
    mask, _ = response_mask(response, stops)
    sampled_at = time.time()

    sums = {k: 0.0 for k in ("kl_exact_full", "kl_exact_trim", "kl_k1_full", "kl_k1_trim",
                             "mass_outside_policy", "mass_outside_reference")}
    n_tokens = 0
    T = response.shape[1]
    with torch.no_grad():
        for s in range(0, len(prompts), args.batch):
            ids = torch.cat([prompt_ids[s:s + args.batch], response[s:s + args.batch]], 1)
            att = torch.cat([prompt_mask[s:s + args.batch], mask[s:s + args.batch]], 1)
            pos = position_ids_from_mask(att)
            m = mask[s:s + args.batch].bool()
            tgt = response[s:s + args.batch]
            lp = {}
            for name, model in (("p", policy), ("r", reference)):
                logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -T - 1:-1].float()
                lp[name, "full"] = F.log_softmax(logits, -1)
                trimmed = torch.full_like(logits, float("-inf"))
                trimmed[..., keep] = logits[..., keep]
                lp[name, "trim"] = F.log_softmax(trimmed, -1)
            for part in ("full", "trim"):
                p, r = lp["p", part], lp["r", part]
                exact = torch.where(p.isfinite(), p.exp() * (p - r), torch.zeros_like(p)).sum(-1)
                k1 = (p - r).gather(-1, tgt[..., None]).squeeze(-1)
                sums[f"kl_exact_{part}"] += float(exact[m].sum())
                sums[f"kl_k1_{part}"] += float(k1[m].sum())
            outside = torch.ones(lp["p", "full"].shape[-1], dtype=torch.bool)
            outside[keep] = False
            sums["mass_outside_policy"] += float(lp["p", "full"][..., outside].exp().sum(-1)[m].sum())
            sums["mass_outside_reference"] += float(lp["r", "full"][..., outside].exp().sum(-1)[m].sum())
            n_tokens += int(m.sum())
    result = {k: v / max(n_tokens, 1) for k, v in sums.items()}
    result.update(policy=str(args.policy), reference=str(args.reference), responses=len(prompts), tokens=n_tokens,
                  kept_tokens=len(keep), vocab=int(lp["p", "full"].shape[-1]), threads=args.threads,
                  seconds_sampling=round(sampled_at - t0, 1), seconds_total=round(time.time() - t0, 1))
    for k in ("kl_exact", "kl_k1"):
        print(f"{k:>10}: full {result[k + '_full']:+.5f}  trimmed {result[k + '_trim']:+.5f} per token")
    print(f"mass the trim drops: policy {result['mass_outside_policy']:.5f}, reference {result['mass_outside_reference']:.5f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
