"""How fast is one `ppo_step`, where does the time go, and how far is it from the bare model calls?

    uv run python benchmarks/ppo_step.py            # main figures, JSON on the last line
    uv run python benchmarks/ppo_step.py --grid     # also seconds per step over length x batch
    uv run python benchmarks/ppo_step.py --grid --quick --value shared     # a fast look, tiny model
    uv run python benchmarks/ppo_step.py --model gemma3-270m --vocab-trim arabic --grid   # a real model

Prints, for a tiny Llama-style model on the CPU:
- rollout tokens/s of ppo_step and seconds per phase (generate, policy/ref/value/reward forwards,
  advantage math, PPO update), and peak RSS;
- the compute floor: the same model calls (sampling, with the policy's log-probs taken from the
  sampling logits; reference, value and reward forwards; the PPO epochs' forward/backward/optimizer
  steps) timed bare, without the library around them. `floor_s` samples with a bare KV-cache loop
  (log-softmax + multinomial per token: the fewest calls possible);
  `floor_hf_generate_s` samples with transformers' `generate()` instead, which is what a library
  built on generate() could at best reach;
- the speed ratio against a naive per-token design that runs one forward pass per state-action
  pair (each token's log-prob and value from its own prefix), as a per-token library would.

`--grid`: seconds per step and per phase (`trainer.timings`) over response length 16/32/64 x batch
4/8/16 (every row samples exactly that many tokens). `--model PATH_OR_NAME` (a prepared folder or a
name such as gemma3-270m, never downloaded) runs a real checkpoint instead: LoRA policy (r 16),
adapter-off reference, value head on the policy's trunk, optional output-vocabulary trim, and a
reward model on a copy of the trunk (`--reward trunk`, as the pipeline's gemma-cpu preset) or a
text-length reward (`--reward length`, no model); with a model the floor and per-pair figures are
skipped, and with `--grid` the single-point run too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig
from ppolab.models import (
    Reference, RewardModel, ValueModel, build_policy, build_tokenizer, load_causal_lm, load_tokenizer,
    value_head_on_policy, wrap_lora,
)
from ppolab.models.vocab_trim import apply_vocab_trim
from ppolab.models.builders import position_ids_from_mask
from ppolab.ppo import PPOTrainer
from ppolab.token_attribution import response_logprobs
from ppolab.token_attribution.generator import kv_cache_kwargs


def build_models(args):
    """(policy, reference, value, reward, tokenizer): the tiny model set-up, or `--model`'s."""
    torch.manual_seed(0)
    if args.model:
        mcfg = ModelConfig(policy_path=args.model, lora=True, lora_r=16, lora_alpha=32, vocab_trim=args.vocab_trim)
        tok = load_tokenizer(args.model)
        policy = apply_vocab_trim(load_causal_lm(args.model, mcfg), tok, args.vocab_trim)
        policy = wrap_lora(policy, mcfg)
    else:
        tok = build_tokenizer(vocab_size=512)
        mcfg = ModelConfig(arch="llama", n_layers=args.layers, hidden_size=args.hidden, n_heads=4, n_kv_heads=4,
                           intermediate_size=4 * args.hidden, lora=args.lora)
        policy = build_policy(mcfg, tok)
    ref = Reference(policy)
    value = value_head_on_policy(policy) if args.value == "shared" else ValueModel.from_policy(policy)
    reward = RewardModel.from_causal_lm(policy, tok).eval() if args.reward == "trunk" else length_reward
    return policy, ref, value, reward, tok


def length_reward(prompts, responses):
    """A reward with no model: the response's length in characters, scaled."""
    return [len(r) / 100 for r in responses]


def make_trainer(models, args, batch: int, length: int, logprob_fn=response_logprobs):
    policy, ref, value, reward, tok = models
    cfg = PPOConfig(batch_size=batch, minibatch_size=batch, ppo_epochs=args.epochs, lr=1e-5)
    gen = GenerationConfig(max_new_tokens=length, temperature=0.7, stop_at_eos=False, max_prompt_length=4096,
                           merged_lora_sampling=args.merged_sampling)
    trainer = PPOTrainer(cfg, policy, ref, value, reward, tok, gen, logprob_fn=logprob_fn)
    prompts = [f"Translate English to Arabic: sentence number {i} about the weather" for i in range(batch)]
    if args.prompt_tokens:  # longer prompts (real few-shot prompts are ~200 tokens): repeat, then cut
        prompts = [tok.decode(tok(" ".join([p] * args.prompt_tokens), add_special_tokens=False)["input_ids"]
                              [: args.prompt_tokens]) for p in prompts]
    return trainer, prompts


def build(args, batch: int, length: int, logprob_fn=response_logprobs):
    return make_trainer(build_models(args), args, batch, length, logprob_fn)


def time_interleaved(trainer, prompts, repeats: int) -> tuple[float, dict, float, float]:
    """Median seconds of ppo_step (with its phases), the strict floor and the generate() floor.

    The three are timed in turn, round after round, so that drift in the machine's speed (a shared
    2-core VM) falls on all three alike instead of on whichever ran last.
    """
    trainer.ppo_step(prompts)  # warm-ups
    floor_once(trainer, prompts, "loop")
    floor_once(trainer, prompts, "hf")
    steps, phases, loops, hfs = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stats = trainer.ppo_step(prompts)
        steps.append(time.perf_counter() - t0)
        phases.append(stats["timings"])
        loops.append(floor_once(trainer, prompts, "loop"))
        hfs.append(floor_once(trainer, prompts, "hf"))
    phase_median = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    med = statistics.median
    return med(steps), phase_median, med(loops), med(hfs)


def time_ppo_step(trainer, prompts, repeats: int, warm_up: bool = True) -> tuple[float, dict]:
    if warm_up:
        trainer.ppo_step(prompts)
    times, phases = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stats = trainer.ppo_step(prompts)
        times.append(time.perf_counter() - t0)
        phases.append(stats["timings"])
    phase_median = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    return statistics.median(times), phase_median


def bare_sample(policy, ids, mask, new_tokens: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, P+T]` ids and `[B, T]` log-probs: the fewest model calls that sample T tokens and know their
    log-probs, a KV-cache loop with nothing around it."""
    pos = position_ids_from_mask(mask)
    out = policy(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    tokens, logprobs = [], []
    for t in range(new_tokens):
        logp = torch.log_softmax(out.logits[:, -1].float() / temperature, -1)
        token = torch.multinomial(logp.exp(), 1)
        tokens.append(token)
        logprobs.append(logp.gather(-1, token))
        if t == new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
        out = policy(input_ids=token, attention_mask=mask, position_ids=pos, use_cache=True, **kv_cache_kwargs(out))
    return torch.cat([ids, *tokens], dim=1), torch.cat(logprobs, dim=1)


def floor_once(trainer, prompts, generate: str = "loop") -> float:
    """Seconds for the same model calls as one ppo_step, with nothing of the library between them.

    generate="loop": sampling by `bare_sample` (the strict floor); "hf": by transformers' generate().
    """
    policy, ref, value, reward, tok = trainer.policy, trainer.ref, trainer.value, trainer.reward, trainer.tokenizer
    g, c = trainer.generation, trainer.config
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    from transformers import GenerationConfig as HFGen

    # top_k=0: transformers 5 replaces top_k=None by 50, which would add a top-k filter to the floor.
    hf = HFGen(do_sample=True, temperature=g.temperature, top_k=0, max_new_tokens=g.max_new_tokens,
               min_new_tokens=g.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=None)
    t0 = time.perf_counter()
    with torch.no_grad():
        if generate == "hf":  # log-probs from the logits generate() returns, as TRL takes them
            gen_out = policy.generate(**enc, generation_config=hf, return_dict_in_generate=True, output_logits=True)
            out = gen_out.sequences
            logits = torch.stack(gen_out.logits, dim=1).float() / g.temperature
            logits.log_softmax(-1).gather(-1, out[:, enc["input_ids"].shape[1]:, None])
        else:
            out, _ = bare_sample(policy, enc["input_ids"], enc["attention_mask"], g.max_new_tokens, g.temperature)
        mask = torch.ones_like(out)
        mask[:, : enc["attention_mask"].shape[1]] = enc["attention_mask"]
        pos = position_ids_from_mask(mask)
        T = out.shape[1] - enc["input_ids"].shape[1]
        ref(input_ids=out, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1)
        value(out, mask)
        reward.score_ids(out, mask)
    for _ in range(c.ppo_epochs * (c.batch_size // c.minibatch_size)):
        logits = policy(input_ids=out, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1).logits
        loss = logits.float().log_softmax(-1).mean() + value(out, mask).mean()
        loss.backward()
        trainer.policy_optimizer.step()
        trainer.value_optimizer.step()
        trainer.policy_optimizer.zero_grad()
        trainer.value_optimizer.zero_grad()
    return time.perf_counter() - t0


# -- the naive per-state-action design -------------------------------------------------------------
def per_pair_logprobs(model, input_ids, attention_mask, n_response, temperature=1.0, with_entropy=False):
    """One forward pass per (sequence, token): the state is the prefix, the action its next token."""
    rows_lp, rows_ent = [], []
    L = input_ids.shape[1]
    for b in range(input_ids.shape[0]):
        lps, ents = [], []
        for t in range(L - n_response, L):
            ids, m = input_ids[b : b + 1, :t], attention_mask[b : b + 1, :t]
            logits = model(input_ids=ids, attention_mask=m, position_ids=position_ids_from_mask(m),
                           use_cache=False, logits_to_keep=1).logits[0, -1].float() / temperature
            logp = logits.log_softmax(-1)
            lps.append(logp[input_ids[b, t]])
            ents.append(-(logp.exp() * logp).sum())
        rows_lp.append(torch.stack(lps))
        rows_ent.append(torch.stack(ents))
    lp = torch.stack(rows_lp)
    return (lp, torch.stack(rows_ent)) if with_entropy else lp


class PerPairLM(torch.nn.Module):
    """A causal LM whose logits at each position come from their own forward over the prefix (for the
    generator's reference pass, which `response_logprobs` scores through the model's forward)."""

    def __init__(self, lm):
        super().__init__()
        self.inner = lm

    def forward(self, input_ids, attention_mask, logits_to_keep=0, **_):
        L = input_ids.shape[1]
        rows = []
        for b in range(input_ids.shape[0]):
            rows.append(torch.stack([
                self.inner(input_ids=input_ids[b : b + 1, :t], attention_mask=attention_mask[b : b + 1, :t],
                           position_ids=position_ids_from_mask(attention_mask[b : b + 1, :t]), use_cache=False,
                           logits_to_keep=1).logits[0, -1]
                for t in range(L - (logits_to_keep or L) + 1, L + 1)]))
        return SimpleNamespace(logits=torch.stack(rows))


class PerPairValue(torch.nn.Module):
    """V(s_t) from its own forward over the prefix s_t, for every t."""

    def __init__(self, value):
        super().__init__()
        self.inner = value

    def forward(self, input_ids, attention_mask):
        B, L = input_ids.shape
        out = torch.zeros(B, L)
        cols = []
        for t in range(1, L + 1):
            cols.append(torch.stack([self.inner(input_ids[b : b + 1, :t], attention_mask[b : b + 1, :t])[0, -1]
                                     for b in range(B)]))
        return torch.stack(cols, 1) if cols else out


def time_naive(args, batch, length) -> float:
    # The update's log-probs through the trainer's seam; the generator's reference and value passes
    # through per-prefix models (the policy's own come from its sampling logits, in fp32).
    trainer, prompts = build(args, batch, length, logprob_fn=per_pair_logprobs)
    trainer.value = trainer.generator.value_model = PerPairValue(trainer.value)
    trainer.generator.reference = PerPairLM(trainer.generator.reference)
    t0 = time.perf_counter()
    trainer.ppo_step(prompts)
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def grid(args, models) -> dict:
    """Seconds per step and per phase over response length x batch, one trainer per cell, same models."""
    cells = {}
    for length in (16, 32, 64):
        for batch in (4, 8, 16):
            trainer, prompts = make_trainer(models, args, batch, length)
            step_s, phases = time_ppo_step(trainer, prompts, args.grid_repeats, warm_up=not args.quick)
            cells[f"T{length}_B{batch}"] = {"s_per_step": round(step_s, 3),
                                            "phases_s": {k: round(v, 3) for k, v in phases.items()}}
            print(f"T={length:<3} B={batch:<3} {step_s:.3f} s/step  " + json.dumps(cells[f"T{length}_B{batch}"]["phases_s"]),
                  file=sys.stderr)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", action="store_true", help="seconds per step and phase over length 16/32/64 x batch 4/8/16")
    ap.add_argument("--grid-repeats", type=int, default=2, help="timed steps per grid cell (median)")
    ap.add_argument("--quick", action="store_true", help="one repeat, no warm-up steps, no per-pair comparison")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--model", help="a prepared checkpoint folder or a pretrained name (gemma3-270m)")
    ap.add_argument("--vocab-trim", choices=("arabic",), help="with --model: trim the output head (ModelConfig.vocab_trim)")
    ap.add_argument("--value", choices=("separate", "shared"), help="value model: a copy of the policy's trunk "
                    "(default for the tiny model) or a head on the policy's trunk (default with --model)")
    ap.add_argument("--reward", choices=("trunk", "length"), default="trunk",
                    help="a reward model on a copy of the trunk, or a text-length reward (no model)")
    ap.add_argument("--merged-sampling", action="store_true",
                    help="sample from a merged copy of the LoRA adapter (GenerationConfig.merged_lora_sampling)")
    ap.add_argument("--lora", action="store_true", help="a LoRA tiny policy (always LoRA with --model)")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="prompts of this many tokens (0: one short sentence)")
    args = ap.parse_args()
    args.value = args.value or ("shared" if args.model else "separate")
    if args.quick:
        args.repeats, args.grid_repeats, args.no_naive = 1, 1, True
    torch.set_num_threads(args.threads)

    models = build_models(args)
    policy = models[0]
    result = {
        "model": args.model or f"llama {args.layers} layers, hidden {args.hidden}",
        "lora": bool(args.model or args.lora), "merged_sampling": args.merged_sampling,
        "value": args.value, "vocab_trim": args.vocab_trim, "reward": args.reward, "ppo_epochs": args.epochs,
        "threads": args.threads, "policy_params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 1),
    }
    if not (args.model and args.grid):
        trainer, prompts = make_trainer(models, args, args.batch, args.length)
        tokens = args.batch * args.length
        result.update({"batch": args.batch, "response_tokens": args.length,
                       "prompt_tokens": int(trainer.generator.encode_prompts(prompts)[0].shape[1])})
        if args.model:  # a real model: the step and its phases only
            step_s, phases = time_ppo_step(trainer, prompts, args.repeats, warm_up=not args.quick)
            result.update({"ppo_step_s": round(step_s, 4), "rollout_tokens_per_s": round(tokens / step_s, 1),
                           "phases_s": {k: round(v, 4) for k, v in phases.items()}})
        else:
            step_s, phases, floor_s, floor_hf_s = time_interleaved(trainer, prompts, args.repeats)
            result.update({
                "ppo_step_s": round(step_s, 4),
                "rollout_tokens_per_s": round(tokens / step_s, 1),
                "phases_s": {k: round(v, 4) for k, v in phases.items()},
                "floor_s": round(floor_s, 4),
                "step_over_floor": round(step_s / floor_s, 3),
                "floor_hf_generate_s": round(floor_hf_s, 4),
                "step_over_floor_hf_generate": round(step_s / floor_hf_s, 3),
            })
        print("ppo_step phases (s):", json.dumps(result["phases_s"]), file=sys.stderr)
        if not args.no_naive and not args.model:
            naive_s = time_naive(args, args.batch, args.length)
            result["naive_per_pair_step_s"] = round(naive_s, 3)
            result["speedup_vs_naive"] = round(naive_s / step_s, 1)
    if args.grid:
        result["grid"] = grid(args, models)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
