"""ppolab vs TRL 1.12.0's PPOTrainer on the same PPO work, each side in its own process.

    uv run python benchmarks/compare_trl.py                     # small: ppolab, trl, trl-nogc; JSON last line
    uv run python benchmarks/compare_trl.py --size large        # 4 layers, hidden 256, 32 x 128 tokens
    uv run python benchmarks/compare_trl.py --updates 8 --repeats 3
    uv run python benchmarks/compare_trl.py --check-determinism # ppolab twice, same seed: same weights?
    uv run python benchmarks/compare_trl.py --side ppolab --profile /tmp/ppolab.prof

The parent launches one child per side and reads its JSON result (last stdout line):
  ppolab    uv run python benchmarks/compare_trl.py --side ppolab ...
  trl       uv run --with trl==1.12.0 python benchmarks/compare_trl.py --side trl ...
  trl-nogc  as trl, with `gc.collect` a no-op inside trl.experimental.ppo.ppo_trainer during training
TRL is never a ppolab dependency: it lives only in the ephemeral `uv run --with` environment.

The work (identical on both sides): Llama-style policy (random weights, fixed seed), a frozen
reference copy, a value model and a reward model (sequence classification, one label, seeded);
a 1,024-token byte-level BPE; 64 prompts of exactly 16 tokens; per update 16 rollouts of exactly
32 sampled tokens (no early stop) at temperature 0.7, 4 PPO epochs of 1 minibatch of 16; fp32 on CPU
with torch.set_num_threads(threads). Only the training loop is timed (no imports, no model building,
no trainer construction); rollouts = 16 * updates; generated tokens are counted from the outputs.
Peak RSS is the child's ru_maxrss (whole process life, model building included), from os.wait4.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRL_VERSION = "1.12.0"

SIZES = {
    # layers, hidden, heads, mlp, rollouts per update, response tokens, default updates
    "small": dict(n_layers=2, hidden=128, n_heads=4, mlp=512, batch=16, response=32, updates=32),
    "large": dict(n_layers=4, hidden=256, n_heads=4, mlp=1024, batch=32, response=128, updates=8),
}
PROMPT_LEN = 16
N_PROMPTS = 64
VOCAB = 1024
TEMPERATURE = 0.7
PPO_EPOCHS = 4
LR = 3e-6  # TRL's PPOConfig default; used on both sides


# ---------------------------------------------------------------------------------------------
# Shared setup: tokenizer, prompts, models (both sides build bit-identical ones)
# ---------------------------------------------------------------------------------------------
def corpus_texts() -> list[str]:
    texts = []
    for name in ("train.tsv", "valid.tsv", "test.tsv"):
        lines = (REPO / "ppolab/data/corpus" / name).read_text(encoding="utf-8").splitlines()[1:]
        for line in lines:
            texts.extend(col for col in line.split("\t")[2:] if col.strip())
    return texts


def build_tokenizer_and_prompts():
    """1,024-token BPE trained on the bundled corpus; 64 prompts of exactly 16 tokens that
    survive decode -> encode unchanged (so ppolab, which takes strings, sees TRL's ids)."""
    from ppolab.models.tokenizer import build_tokenizer

    texts = corpus_texts()
    tok = build_tokenizer(texts, vocab_size=VOCAB)
    assert tok.pad_token_id != tok.eos_token_id
    stream = " ".join(texts)
    prompts, ids = [], []
    words = stream.split(" ")
    i = 0
    while len(prompts) < N_PROMPTS and i < len(words):
        chunk = " ".join(words[i : i + 24])
        i += 7
        enc = tok(chunk, add_special_tokens=False)["input_ids"]
        if len(enc) < PROMPT_LEN:
            continue
        cand = enc[:PROMPT_LEN]
        text = tok.decode(cand)
        if text.strip() and text == text.strip() and tok(text, add_special_tokens=False)["input_ids"] == cand \
                and text not in prompts:
            prompts.append(text)
            ids.append(cand)
    if len(prompts) < N_PROMPTS:
        raise RuntimeError(f"only {len(prompts)} round-tripping prompts of {PROMPT_LEN} tokens")
    return tok, prompts, ids


def model_configs(size: dict, tok):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=size["hidden"], intermediate_size=size["mlp"],
        num_hidden_layers=size["n_layers"], num_attention_heads=size["n_heads"],
        num_key_value_heads=size["n_heads"], head_dim=size["hidden"] // size["n_heads"],
        max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, attention_dropout=0.0, tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return cfg


def build_models(size: dict, tok, seed: int):
    """policy, frozen reference copy, value and reward (seq-cls, 1 label), all fp32, seeded."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = model_configs(size, tok)
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    policy.generation_config.pad_token_id = tok.pad_token_id
    policy.generation_config.eos_token_id = tok.eos_token_id
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    scfg = copy.deepcopy(cfg)
    scfg.num_labels = 1
    torch.manual_seed(seed + 1)
    value = AutoModelForSequenceClassification.from_config(scfg, dtype=torch.float32)
    torch.manual_seed(seed + 2)
    reward = AutoModelForSequenceClassification.from_config(scfg, dtype=torch.float32).eval()
    for p in reward.parameters():
        p.requires_grad_(False)
    return policy, ref, value, reward


def state_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# Children: one side each
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def timed_loop(profile_path: str | None):
    """Time the block in wall and CPU seconds (and cProfile it to `profile_path` if given).

    Yields a dict that holds `t0` and `load_start` at once and `seconds`, `cpu_seconds` on exit.
    """
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
    out = {"load_start": loadavg()}
    c0 = time.process_time()
    out["t0"] = time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        yield out
    finally:
        if profiler:
            profiler.disable()
        out["seconds"] = time.perf_counter() - out["t0"]
        out["cpu_seconds"] = time.process_time() - c0
        if profiler:
            profiler.dump_stats(profile_path)


def run_ppolab(args, size: dict) -> dict:
    import numpy as np
    import torch

    from ppolab.config import GenerationConfig, PPOConfig
    from ppolab.models import Reference, ValueModel
    from ppolab.ppo import PPOTrainer

    tok, prompts, _ = build_tokenizer_and_prompts()
    policy, ref, value_seq, reward = build_models(size, tok, args.seed)
    models_hash = "".join(state_hash(m)[:16] for m in (policy, ref, value_seq, reward))
    # TRL's value model is a seq-cls model: critic = its backbone + `score` (Linear, no bias).
    # The ppolab mirror: a ValueModel on that very backbone, head weights copied, bias zero.
    value = ValueModel(value_seq.model, head_hidden=0, head_names=("value",))
    with torch.no_grad():
        value.head.net.weight.copy_(value_seq.score.weight)
        value.head.net.bias.zero_()
    B = size["batch"]
    config = PPOConfig(
        batch_size=B, minibatch_size=B, ppo_epochs=PPO_EPOCHS, lr=LR, kl_coef=0.05, vf_coef=0.1,
        clip_eps=0.2, value_clip_eps=0.2, gamma=1.0, lam=0.95, max_grad_norm=args.ppolab_max_grad_norm,
        seed=args.seed,
    )
    gen = GenerationConfig(max_new_tokens=size["response"], temperature=TEMPERATURE, stop_at_eos=False,
                           max_prompt_length=PROMPT_LEN)
    trainer = PPOTrainer(config, policy, Reference(policy, ref), value, reward, tok, gen)
    initial_hash = state_hash(policy)
    rng = np.random.default_rng(args.seed)
    order: list[int] = []
    torch.set_num_threads(args.threads)

    phase: dict[str, float] = {}
    tokens = 0
    step_times = []
    with timed_loop(args.profile) as clock:
        for _ in range(args.updates):
            if len(order) < B:  # a fresh shuffle of the 64 prompts, like TRL's DataLoader(shuffle=True)
                order.extend(rng.permutation(N_PROMPTS).tolist())
            batch = [prompts[i] for i in order[:B]]
            del order[:B]
            stats = trainer.ppo_step(batch)
            tokens += int(stats["tokens"])
            assert stats["response_length"] == size["response"], stats["response_length"]
            for k, v in stats["timings"].items():
                phase[k] = phase.get(k, 0.0) + v
            step_times.append(time.perf_counter())
    return dict(
        seconds=clock["seconds"], cpu_seconds=clock["cpu_seconds"], tokens=tokens,
        step_ends=[t - clock["t0"] for t in step_times],
        phase_seconds={k: round(v, 4) for k, v in phase.items()}, load_start=clock["load_start"],
        policy_hash=state_hash(policy), initial_policy_hash=initial_hash, models_hash=models_hash,
    )


def run_trl(args, size: dict, nogc: bool) -> dict:
    import tempfile
    import types
    import warnings

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    warnings.filterwarnings("ignore")
    import trl
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"expected trl=={TRL_VERSION}, got {trl.__version__}")
    tok, _, prompt_ids = build_tokenizer_and_prompts()
    policy, ref, value, reward = build_models(size, tok, args.seed)
    models_hash = "".join(state_hash(m)[:16] for m in (policy, ref, value, reward))
    B = size["batch"]
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    out_dir = tempfile.mkdtemp(prefix="compare_trl_")
    config = PPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=args.seed, data_seed=args.seed,
        per_device_train_batch_size=B, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=PPO_EPOCHS, total_episodes=B * args.updates, response_length=size["response"],
        stop_token=None, temperature=TEMPERATURE, learning_rate=LR, lr_scheduler_type="constant",
        kl_coef=0.05, vf_coef=0.1, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95,
        num_sample_generations=0, local_rollout_forward_batch_size=B, disable_tqdm=True,
        logging_steps=10**9, dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
        train_dataset=dataset, value_model=value, eval_dataset=dataset,
    )
    # Count generated tokens from TRL's own outputs (response columns of each generation).
    counted = {"tokens": 0, "lengths": set()}
    real_batch_generation = trl_ppo.batch_generation

    def counting_batch_generation(model, queries, *a, **k):
        qr, logits = real_batch_generation(model, queries, *a, **k)
        counted["tokens"] += qr.shape[0] * (qr.shape[1] - queries.shape[1])
        counted["lengths"].add(qr.shape[1] - queries.shape[1])
        return qr, logits

    trl_ppo.batch_generation = counting_batch_generation
    if nogc:
        real_gc = trl_ppo.gc
        trl_ppo.gc = types.SimpleNamespace(collect=lambda *a, **k: 0)

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter())

    trainer.add_callback(StepTimer())
    torch.set_num_threads(args.threads)
    with timed_loop(args.profile) as clock:
        trainer.train()
    if nogc:
        trl_ppo.gc = real_gc
    trl_ppo.batch_generation = real_batch_generation
    assert counted["lengths"] == {size["response"]}, counted["lengths"]
    assert len(step_times) == args.updates, (len(step_times), args.updates)
    return dict(
        seconds=clock["seconds"], cpu_seconds=clock["cpu_seconds"], tokens=counted["tokens"],
        step_ends=[t - clock["t0"] for t in step_times], load_start=clock["load_start"],
        policy_hash=state_hash(trainer.model.policy), trl_version=trl.__version__, models_hash=models_hash,
    )


def child_main(args) -> None:
    import torch
    import transformers

    import ppolab

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    if args.side == "ppolab":
        res = run_ppolab(args, size)
    else:
        res = run_trl(args, size, nogc=args.side == "trl-nogc")
    rollouts = size["batch"] * args.updates
    ends = res.pop("step_ends")
    steady = None
    if len(ends) >= 3:  # rollouts/s from the end of update 1 on: no first-call warm-up
        steady = size["batch"] * (len(ends) - 1) / (ends[-1] - ends[0])
    res.update(
        side=args.side, size=args.size, updates=args.updates, rollouts=rollouts,
        rollouts_per_s=rollouts / res["seconds"], tokens_per_s=res["tokens"] / res["seconds"],
        rollouts_per_cpu_s=rollouts / res["cpu_seconds"],
        steady_rollouts_per_s=steady, threads=torch.get_num_threads(),
        maxrss_mb_self=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch=torch.__version__, transformers=transformers.__version__, load_end=loadavg(),
        ppolab_path=str(Path(ppolab.__file__).parent),
    )
    print(json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent: launch the sides, gather, compare
# ---------------------------------------------------------------------------------------------
def child_command(args, side: str, extra: list[str] | None = None) -> list[str]:
    uv = ["uv", "run", "--quiet"]
    if side.startswith("trl"):
        uv += ["--with", f"trl=={TRL_VERSION}"]
    cmd = uv + ["python", str(Path(__file__).resolve()), "--side", side, "--size", args.size,
                "--updates", str(args.updates), "--seed", str(args.seed), "--threads", str(args.threads),
                "--ppolab-max-grad-norm", str(args.ppolab_max_grad_norm)]
    return cmd + (extra or [])


CHILD_ENV: dict[str, str] = {}  # extra environment for the children (PYTHONPATH with --ppolab-rev)


def export_revision(rev: str) -> tuple[str, str]:
    """`git archive` ppolab/ at `rev` into a temp folder; children import it first (PYTHONPATH)."""
    import tempfile

    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = tempfile.mkdtemp(prefix=f"ppolab_{sha}_")
    archive = subprocess.run(["git", "archive", sha, "ppolab"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return sha, dest


def run_child(cmd: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(cmd[cmd.index("--threads") + 1]), **CHILD_ENV)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child (and its reaped children) only
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(out[-4000:])
        raise SystemExit(f"child failed (exit {proc.returncode}): {' '.join(cmd)}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    return res


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def summarize(runs: list[dict]) -> dict:
    keys = ("rollouts_per_s", "tokens_per_s", "steady_rollouts_per_s", "rollouts_per_cpu_s", "seconds",
            "cpu_seconds", "peak_rss_mb")
    out = {k: round(median([r[k] for r in runs]), 3) for k in keys if all(r.get(k) is not None for r in runs)}
    out["runs_rollouts_per_s"] = [round(r["rollouts_per_s"], 2) for r in runs]
    out["rollouts"] = runs[0]["rollouts"]
    out["tokens"] = runs[0]["tokens"]
    if "phase_seconds" in runs[0]:
        out["phase_seconds_first_run"] = runs[0]["phase_seconds"]
        out["ppolab_path"] = runs[0]["ppolab_path"]
    return out


def parent_main(args) -> None:
    size = SIZES[args.size]
    rev = ppolab_revision()
    if args.ppolab_rev:
        rev, path = export_revision(args.ppolab_rev)
        CHILD_ENV["PYTHONPATH"] = path + os.pathsep + os.environ.get("PYTHONPATH", "")
    if args.check_determinism:
        a = run_child(child_command(args, "ppolab"))
        b = run_child(child_command(args, "ppolab"))
        result = {"check": "determinism", "size": args.size, "updates": args.updates, "seed": args.seed,
                  "ppolab_revision": rev,
                  "threads": args.threads, "initial_hash": a["initial_policy_hash"],
                  "hash_run1": a["policy_hash"], "hash_run2": b["policy_hash"],
                  "identical": a["policy_hash"] == b["policy_hash"],
                  "trained": a["policy_hash"] != a["initial_policy_hash"]}
        print(json.dumps(result))
        if not result["trained"]:
            raise SystemExit("ppolab's policy weights did not change: nothing was trained")
        if not result["identical"]:
            raise SystemExit("ppolab is not deterministic: policy weights differ between two runs with one seed")
        return
    sides = args.sides.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    load0 = loadavg()
    for _ in range(args.repeats):  # interleave sides so load drift hits all of them
        for s in sides:
            r = run_child(child_command(args, s))
            runs[s].append(r)
            print(f"{s:9s} {r['rollouts_per_s']:7.2f} rollouts/s  {r['tokens_per_s']:8.1f} tok/s  "
                  f"{r['seconds']:6.2f} s  {r['rollouts_per_cpu_s']:6.2f} rollouts/cpu-s  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB  load {r['load_start']}",
                  file=sys.stderr, flush=True)
    summary = {s: summarize(rs) for s, rs in runs.items()}
    # Same tokenizer, prompts and initial weights on every side (policy, reference, value, reward).
    same_models = len({r["models_hash"] for rs in runs.values() for r in rs}) == 1
    result = {
        "size": args.size, "updates": args.updates, "rollouts_per_update": size["batch"],
        "response_tokens": size["response"], "threads": args.threads, "repeats": args.repeats,
        "seed": args.seed, "same_initial_models": same_models,
        "load_before": load0, "load_after": loadavg(), "machine": machine(), "ppolab_revision": rev,
        **summary,
    }
    p = summary.get("ppolab")
    for s in ("trl", "trl-nogc"):
        if p and s in summary:
            name = s.replace("-", "_")
            result[f"ratio_ppolab_over_{name}"] = round(p["rollouts_per_s"] / summary[s]["rollouts_per_s"], 3)
            result[f"cpu_ratio_ppolab_over_{name}"] = round(
                p["rollouts_per_cpu_s"] / summary[s]["rollouts_per_cpu_s"], 3)
    print(json.dumps(result))


def ppolab_revision() -> str:
    """HEAD of the checkout, with '+dirty' when ppolab/ has uncommitted changes (what was measured)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ppolab"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()} cpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("all", "ppolab", "trl", "trl-nogc"), default="all",
                    help="all: launch each side as a subprocess and compare (default); else run one side here")
    ap.add_argument("--sides", default="ppolab,trl,trl-nogc", help="with --side all: which sides, comma-separated")
    ap.add_argument("--size", choices=tuple(SIZES), default="small")
    ap.add_argument("--updates", type=int, default=None, help="PPO updates (default: 32 small, 8 large)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side, interleaved; medians reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ppolab-max-grad-norm", type=float, default=1.0,
                    help="ppolab's gradient clipping (its default 1.0; TRL's PPO loop never clips; 0 disables)")
    ap.add_argument("--ppolab-rev", default=None,
                    help="measure ppolab as committed at this git revision (e.g. HEAD) instead of the working "
                         "tree: ppolab/ is exported with git archive and put first on the children's PYTHONPATH")
    ap.add_argument("--check-determinism", action="store_true",
                    help="run ppolab's side twice with one seed and require identical policy weights")
    ap.add_argument("--profile", default=None, help="with --side ppolab/trl/trl-nogc: write a cProfile of the training loop here")
    args = ap.parse_args()
    if args.updates is None:
        args.updates = SIZES[args.size]["updates"]
    if args.updates < 1:
        ap.error("--updates must be >= 1")
    if args.side == "all":
        parent_main(args)
    else:
        child_main(args)


if __name__ == "__main__":
    main()
