"""ppolab vs TRL 1.12.0's PPOTrainer on the same PPO work, each side in its own process.

    uv run python benchmarks/compare_trl.py                     # small: ppolab, trl, trl-nogc; JSON last line
    uv run python benchmarks/compare_trl.py --size large        # 4 layers, hidden 256, 32 x 128 tokens
    uv run python benchmarks/compare_trl.py --updates 8 --repeats 3
    uv run python benchmarks/compare_trl.py --check-determinism # ppolab twice, same seed: same weights?
    uv run python benchmarks/compare_trl.py --side ppolab --profile /tmp/ppolab.prof
    uv run --extra gemma python benchmarks/compare_trl.py --size gemma --threads 1   # real Gemma 3 270M + LoRA

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

`--size gemma` runs the real pretrained Gemma 3 270M (`ppolab.models.pretrained_path("gemma3-270m")`,
fp32, sdpa) instead: a LoRA policy (r 16, alpha 32, dropout 0, q/k/v/o projections) whose reference
is the adapter-disabled base on both sides, a frozen seq-cls reward model on the same base weights
(seeded `score` head), the Gemma tokenizer (prompts: BOS + 15 corpus tokens), 16 rollouts x 48
tokens, 2 PPO epochs, 6 updates. The value model differs by design: TRL trains a separate seq-cls
value backbone in full, ppolab a value head on the policy's shared trunk (`value_model` in the JSON).
A fourth side, `ppolab-trim`, adds ppolab's Arabic output-vocabulary trim (not identical work).
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
    # the real pretrained Gemma 3 270M with a LoRA policy (see GEMMA_* and build_gemma_*)
    "gemma": dict(model="gemma3-270m", batch=16, response=48, updates=6, ppo_epochs=2),
}
SIDES = ("ppolab", "trl", "trl-nogc", "ppolab-trim")
DEFAULT_SIDES = {"gemma": "ppolab,trl,trl-nogc,ppolab-trim"}  # others: ppolab,trl,trl-nogc
GEMMA_ATTN = "sdpa"  # what Gemma 3 loads with in transformers 5; set explicitly, the same on both sides
GEMMA_LORA = dict(r=16, alpha=32, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
GEMMA_HEAD_STD = 0.02  # seeded `score` head of the reward (and TRL's value) model: N(0, 0.02)
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


def build_tokenizer_and_prompts(size_name: str = "small"):
    """1,024-token BPE trained on the bundled corpus (gemma: Gemma 3's own tokenizer); 64 prompts
    of exactly 16 tokens that survive decode -> encode unchanged (so ppolab, which takes strings,
    sees TRL's ids). Gemma's prompts start with BOS (its tokenizer adds one; the model expects it):
    BOS + 15 corpus tokens, the decoded text "<bos>..." encodes back to the same 16 ids."""
    texts = corpus_texts()
    prefix: list[int] = []
    if size_name == "gemma":
        from ppolab.models import load_tokenizer

        tok = load_tokenizer(gemma_path())
        prefix = [tok.bos_token_id]
    else:
        from ppolab.models.tokenizer import build_tokenizer

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
        cand = prefix + enc[: PROMPT_LEN - len(prefix)]
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


def tensors_hash(named) -> str:
    """SHA-256 over (name, tensor) pairs in name order."""
    h = hashlib.sha256()
    for k, v in sorted(named):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trainable_hash(model) -> str:
    """Hash of the parameters that train (the LoRA adapter of a peft policy; everything otherwise)."""
    return tensors_hash((k, v) for k, v in model.named_parameters() if v.requires_grad)


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M (--size gemma): the same pretrained weights and seeded heads on both sides
# ---------------------------------------------------------------------------------------------
def gemma_path() -> str:
    from ppolab.models import pretrained_path

    return str(pretrained_path(SIZES["gemma"]["model"]))


def gemma_causal_lm():
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_path(), dtype=torch.float32, attn_implementation=GEMMA_ATTN)


def gemma_seq_cls(seed: int):
    """A 1-label sequence-classification model on the base Gemma weights; `score` ~ N(0, 0.02) from
    its own seeded generator (not transformers' init, so both sides get the same head)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(gemma_path())
    cfg.num_labels = 1
    model = AutoModelForSequenceClassification.from_pretrained(
        gemma_path(), config=cfg, dtype=torch.float32, attn_implementation=GEMMA_ATTN)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g) * GEMMA_HEAD_STD)
    return model


def gemma_lora_config():
    from peft import LoraConfig

    c = GEMMA_LORA
    return LoraConfig(r=c["r"], lora_alpha=c["alpha"], lora_dropout=c["dropout"],
                      target_modules=list(c["targets"]), task_type="CAUSAL_LM")


def gemma_models_hash(policy, reward, prompt_ids) -> str:
    """What must match across sides: the base weights (the prepared folder's source sha256), the
    LoRA adapter's initial weights, the reward head and the prompt ids."""
    import torch

    meta = json.loads((Path(gemma_path()) / "ppolab_pretrained.json").read_text(encoding="utf-8"))
    return "".join([
        meta["sha256"][:16], trainable_hash(policy)[:16],
        tensors_hash(reward.score.named_parameters())[:16],
        tensors_hash([("prompts", torch.tensor(prompt_ids))])[:16],
    ])


def value_model_note(side: str, size_name: str) -> str:
    if size_name != "gemma":
        return "separate seq-cls value model (same initial weights on both sides)"
    if side.startswith("trl"):
        return "separate Gemma 3 270M seq-cls value backbone, trained in full (TRL's design)"
    return "value head on the policy's shared trunk, trained through the LoRA adapter (ppolab value_init='shared')"


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


def build_ppolab_gemma(args, tok, prompt_ids, trim: bool):
    """LoRA policy on Gemma 3 270M (optionally with the Arabic output-vocabulary trim), its
    adapter-off base as reference, a value head on its trunk, the frozen seq-cls reward."""
    import torch

    from ppolab.config import ModelConfig
    from ppolab.models import Reference, build_value_model, freeze, wrap_lora
    from ppolab.models.vocab_trim import apply_vocab_trim

    c = GEMMA_LORA
    mcfg = ModelConfig(policy_path=gemma_path(), lora=True, lora_r=c["r"], lora_alpha=c["alpha"],
                       lora_dropout=c["dropout"], lora_target_modules=c["targets"], value_init="shared",
                       vocab_trim="arabic" if trim else None)
    policy = apply_vocab_trim(gemma_causal_lm(), tok, mcfg.vocab_trim)
    torch.manual_seed(args.seed)  # the LoRA init (TRL's side seeds the same before its get_peft_model)
    policy = wrap_lora(policy, mcfg)
    reward = freeze(gemma_seq_cls(args.seed + 2))
    models_hash = gemma_models_hash(policy, reward, prompt_ids)
    value = build_value_model(policy, None, mcfg.value_init, mcfg.value_head_hidden)
    return policy, Reference(policy), value, reward, models_hash


def run_ppolab(args, size: dict, trim: bool = False) -> dict:
    import numpy as np
    import torch

    from ppolab.config import GenerationConfig, PPOConfig
    from ppolab.models import Reference, ValueModel
    from ppolab.ppo import PPOTrainer

    tok, prompts, prompt_ids = build_tokenizer_and_prompts(args.size)
    if args.size == "gemma":
        policy, ref, value, reward, models_hash = build_ppolab_gemma(args, tok, prompt_ids, trim)
    else:
        policy, ref_copy, value_seq, reward = build_models(size, tok, args.seed)
        models_hash = "".join(state_hash(m)[:16] for m in (policy, ref_copy, value_seq, reward))
        # TRL's value model is a seq-cls model: critic = its backbone + `score` (Linear, no bias).
        # The ppolab mirror: a ValueModel on that very backbone, head weights copied, bias zero.
        value = ValueModel(value_seq.model, head_hidden=0, head_names=("value",))
        with torch.no_grad():
            value.head.net.weight.copy_(value_seq.score.weight)
            value.head.net.bias.zero_()
        ref = Reference(policy, ref_copy)
    B = size["batch"]
    config = PPOConfig(
        batch_size=B, minibatch_size=B, ppo_epochs=size.get("ppo_epochs", PPO_EPOCHS), lr=LR, kl_coef=0.05, vf_coef=0.1,
        clip_eps=0.2, value_clip_eps=0.2, gamma=1.0, lam=0.95, max_grad_norm=args.ppolab_max_grad_norm,
        seed=args.seed,
    )
    gen = GenerationConfig(max_new_tokens=size["response"], temperature=TEMPERATURE, stop_at_eos=False,
                           max_prompt_length=PROMPT_LEN)
    trainer = PPOTrainer(config, policy, ref, value, reward, tok, gen)
    policy_hash = trainable_hash if args.size == "gemma" else state_hash  # gemma: the adapter only
    initial_hash = policy_hash(policy)
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
        policy_hash=policy_hash(policy), initial_policy_hash=initial_hash, models_hash=models_hash,
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
    tok, _, prompt_ids = build_tokenizer_and_prompts(args.size)
    gemma = args.size == "gemma"
    peft_config = None
    if gemma:
        # TRL wraps the policy in the LoRA adapter itself (peft_config) and, with ref_model=None,
        # uses the adapter-disabled base as reference; the value model is a second seq-cls backbone.
        policy, ref, peft_config = gemma_causal_lm(), None, gemma_lora_config()
        value = gemma_seq_cls(args.seed + 1)
        reward = gemma_seq_cls(args.seed + 2).eval()
        for p in reward.parameters():
            p.requires_grad_(False)
        policy.generation_config.pad_token_id = tok.pad_token_id
    else:
        policy, ref, value, reward = build_models(size, tok, args.seed)
        models_hash = "".join(state_hash(m)[:16] for m in (policy, ref, value, reward))
    B = size["batch"]
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    out_dir = tempfile.mkdtemp(prefix="compare_trl_")
    config = PPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=args.seed, data_seed=args.seed,
        per_device_train_batch_size=B, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=size.get("ppo_epochs", PPO_EPOCHS), total_episodes=B * args.updates, response_length=size["response"],
        stop_token=None, temperature=TEMPERATURE, learning_rate=LR, lr_scheduler_type="constant",
        kl_coef=0.05, vf_coef=0.1, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95,
        num_sample_generations=0, local_rollout_forward_batch_size=B, disable_tqdm=True,
        logging_steps=10**9, dataloader_num_workers=0,
    )
    if gemma:
        torch.manual_seed(args.seed)  # the LoRA init inside PPOTrainer's get_peft_model, as ppolab's side
    trainer = PPOTrainer(
        args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
        train_dataset=dataset, value_model=value, eval_dataset=dataset, peft_config=peft_config,
    )
    if gemma:
        assert trainer.is_peft_model and trainer.ref_model is None
        models_hash = gemma_models_hash(trainer.policy_model, reward, prompt_ids)
    # Count generated tokens from TRL's own outputs (response columns of each generation), and time
    # TRL's phases by wrapping the module-level functions its training loop calls:
    #   generate        batch_generation (sampling; the policy's log-probs come from its logits)
    #   ref_forward     forward() with grad off (the adapter-disabled or copied reference)
    #   value_forward   get_reward(value_model) in the rollout
    #   reward_forward  get_reward(reward_model)
    #   update_forward  forward() with grad on: policy + value in the PPO epochs
    #   gc              trl's gc.collect() calls (a no-op for trl-nogc)
    #   rest            the loop's remaining time: backward, optimizer steps, advantages, logging
    counted = {"tokens": 0, "lengths": set()}
    phase: dict[str, float] = {}
    real = {name: getattr(trl_ppo, name) for name in ("batch_generation", "forward", "get_reward", "gc")}

    def add(name: str, t0: float) -> None:
        phase[name] = phase.get(name, 0.0) + time.perf_counter() - t0

    def timed_batch_generation(model, queries, *a, **k):
        t0 = time.perf_counter()
        qr, logits = real["batch_generation"](model, queries, *a, **k)
        add("generate", t0)
        counted["tokens"] += qr.shape[0] * (qr.shape[1] - queries.shape[1])
        counted["lengths"].add(qr.shape[1] - queries.shape[1])
        return qr, logits

    def timed_forward(*a, **k):
        t0 = time.perf_counter()
        name = "update_forward" if torch.is_grad_enabled() else "ref_forward"
        out = real["forward"](*a, **k)
        add(name, t0)
        return out

    def timed_get_reward(model, *a, **k):
        t0 = time.perf_counter()
        out = real["get_reward"](model, *a, **k)
        add("reward_forward" if model is reward else "value_forward", t0)
        return out

    def timed_collect(*a, **k):
        t0 = time.perf_counter()
        out = 0 if nogc else real["gc"].collect(*a, **k)
        add("gc", t0)
        return out

    trl_ppo.batch_generation = timed_batch_generation
    trl_ppo.forward = timed_forward
    trl_ppo.get_reward = timed_get_reward
    trl_ppo.gc = types.SimpleNamespace(collect=timed_collect)  # trl-nogc: collect is a no-op

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter())

    trainer.add_callback(StepTimer())
    torch.set_num_threads(args.threads)
    with timed_loop(args.profile) as clock:
        trainer.train()
    for name, fn in real.items():
        setattr(trl_ppo, name, fn)
    assert counted["lengths"] == {size["response"]}, counted["lengths"]
    assert len(step_times) == args.updates, (len(step_times), args.updates)
    phase["rest"] = clock["seconds"] - sum(phase.values())
    policy_hash = trainable_hash if gemma else state_hash
    return dict(
        seconds=clock["seconds"], cpu_seconds=clock["cpu_seconds"], tokens=counted["tokens"],
        step_ends=[t - clock["t0"] for t in step_times], load_start=clock["load_start"],
        phase_seconds={k: round(v, 4) for k, v in phase.items()},
        policy_hash=policy_hash(trainer.model.policy), trl_version=trl.__version__, models_hash=models_hash,
    )


def child_main(args) -> None:
    import torch
    import transformers

    import ppolab

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    if args.side in ("ppolab", "ppolab-trim"):
        res = run_ppolab(args, size, trim=args.side == "ppolab-trim")
    else:
        res = run_trl(args, size, nogc=args.side == "trl-nogc")
    rollouts = size["batch"] * args.updates
    ends = res.pop("step_ends")
    steady = None
    if len(ends) >= 3:  # rollouts/s from the end of update 1 on: no first-call warm-up
        steady = size["batch"] * (len(ends) - 1) / (ends[-1] - ends[0])
    res.update(
        side=args.side, size=args.size, updates=args.updates, rollouts=rollouts,
        value_model=value_model_note(args.side, args.size), identical_work=args.side != "ppolab-trim",
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
    if args.size == "gemma":
        uv += ["--extra", "gemma"]
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
    # Each run as it ends, so an interrupted --repeats run still reports the rounds it finished.
    print("run: " + json.dumps({k: v for k, v in res.items() if not isinstance(v, (list, dict))}),
          file=sys.stderr, flush=True)
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
    out["value_model"] = runs[0]["value_model"]
    out["identical_work"] = runs[0]["identical_work"]
    if "phase_seconds" in runs[0]:
        out["phase_seconds_first_run"] = runs[0]["phase_seconds"]
    if runs[0]["side"].startswith("ppolab"):
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
    sides = (args.sides or DEFAULT_SIDES.get(args.size, "ppolab,trl,trl-nogc")).split(",")
    if not set(sides) <= set(SIDES):
        raise SystemExit(f"--sides: unknown {sorted(set(sides) - set(SIDES))}; known {SIDES}")
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
    # Same tokenizer, prompts and initial weights on every side (policy, reference, value, reward;
    # gemma: base weights, LoRA init, reward head, prompt ids; ppolab-trim's hash is the same: the
    # trimmed head is outside the state_dict, the difference is `identical_work: false`).
    same_models = len({r["models_hash"] for rs in runs.values() for r in rs}) == 1
    result = {
        "size": args.size, "updates": args.updates, "rollouts_per_update": size["batch"],
        "response_tokens": size["response"], "threads": args.threads, "repeats": args.repeats,
        "seed": args.seed, "same_initial_models": same_models,
        "load_before": load0, "load_after": loadavg(), "machine": machine(), "ppolab_revision": rev,
        **summary,
    }
    for mine in ("ppolab", "ppolab-trim"):
        p = summary.get(mine)
        for s in ("trl", "trl-nogc"):
            if p and s in summary:
                name = mine.replace("-", "_") + "_over_" + s.replace("-", "_")
                result[f"ratio_{name}"] = round(p["rollouts_per_s"] / summary[s]["rollouts_per_s"], 3)
                result[f"cpu_ratio_{name}"] = round(p["rollouts_per_cpu_s"] / summary[s]["rollouts_per_cpu_s"], 3)
                result[f"rss_ratio_{name}"] = round(p["peak_rss_mb"] / summary[s]["peak_rss_mb"], 3)
    if args.size == "gemma" and all(s in summary for s in ("ppolab", "trl", "trl-nogc")):
        # Issue #13's goals, on the identical-work side `ppolab` (wall-clock rollouts/s).
        result["goals"] = {
            "ppolab_ge_1.5x_trl": result["ratio_ppolab_over_trl"] >= 1.5,
            "ppolab_ge_1.2x_trl_nogc": result["ratio_ppolab_over_trl_nogc"] >= 1.2,
            "ppolab_peak_rss_below_trl": summary["ppolab"]["peak_rss_mb"] < summary["trl"]["peak_rss_mb"],
        }
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
    ap.add_argument("--side", choices=("all",) + SIDES, default="all",
                    help="all: launch each side as a subprocess and compare (default); else run one side here "
                         "(ppolab-trim: ppolab with the Arabic output-vocabulary trim, gemma only)")
    ap.add_argument("--sides", default=None,
                    help="with --side all: which sides, comma-separated (default ppolab,trl,trl-nogc; "
                         "gemma: ppolab,trl,trl-nogc,ppolab-trim)")
    ap.add_argument("--size", choices=tuple(SIZES), default="small")
    ap.add_argument("--updates", type=int, default=None, help="PPO updates (default: 32 small, 8 large, 6 gemma)")
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
    if "ppolab-trim" in (args.side, *(args.sides or "").split(",")) and args.size != "gemma":
        ap.error("ppolab-trim (the Arabic vocabulary trim) needs --size gemma")
    if args.side == "all":
        parent_main(args)
    else:
        child_main(args)


if __name__ == "__main__":
    main()
