"""One rank of tests/test_distributed.py: `python -m torch.distributed.run --standalone
--nproc_per_node=2 tests/_dist_worker.py OUTDIR`.

OUTDIR holds what the test process prepared (`rollout.pt`: one deterministic 8-row rollout;
`tokenizer/`). Each rank takes its rows of the rollout, trimmed as its own generator would have
returned them (its own longest prompt and response), runs make_experience + update under the
configs below, then one real ppo_step on its own prompts, and saves `rank{r}.pt` for the test
to compare with a single process. The helpers here are imported by the test, so both sides
build exactly the same trainers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, the tests package is not importable otherwise
    sys.path.insert(0, str(ROOT))

from ppolab.config import GenerationConfig, ModelConfig, PPOConfig  # noqa: E402
from ppolab.models import Reference, ValueModel, build_policy  # noqa: E402
from ppolab.ppo.trainer import PPOTrainer  # noqa: E402
from ppolab.token_attribution import Rollout  # noqa: E402

N_RANKS = 2
PROMPTS = ["Translate English to Arabic: hello", "Good morning, friend", "Where is the station?", "Merci beaucoup"]
COMMON = dict(batch_size=8, lr=3e-3, kl_coef=0.05, seed=0)
# A: one global minibatch (the whole batch) per epoch: 2 ranks must equal 1 process on the same rows.
# B: minibatches of 4 = 2 rows of each rank; the single-process twin steps on the same row sets.
CONFIGS = {
    "A": PPOConfig(**COMMON, minibatch_size=8, micro_batch_size=2, ppo_epochs=2, whiten_rewards=True),
    "B": PPOConfig(**COMMON, minibatch_size=4, micro_batch_size=1, ppo_epochs=2),
}
# C: a real ppo_step, 4 prompts on each rank.
CONFIG_C = PPOConfig(**COMMON, minibatch_size=4, ppo_epochs=1, adaptive_kl=True, kl_target=0.01, kl_horizon=100)


def length_reward(prompts, responses):
    """Deterministic and spread out, so whitening and clipping have something to do."""
    return [len(r) / 10.0 - 1.0 for r in responses]


def arabic_fraction(prompts, responses):
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


def make_trainer(config: PPOConfig, tokenizer, reward=length_reward) -> PPOTrainer:
    """The same tiny models on every rank and in the test process (seeded; rank 0's are broadcast)."""
    cfg = ModelConfig(arch="llama", hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=64, seed=0)
    policy = build_policy(cfg, tokenizer)
    return PPOTrainer(config, policy, Reference(policy), ValueModel.from_policy(policy), reward, tokenizer,
                      GenerationConfig(max_new_tokens=8))


def rollout_fields(rollout: Rollout) -> dict:
    return {k: getattr(rollout, k) for k in Rollout.__dataclass_fields__}


def shard(rollout: dict, rank: int, n_ranks: int = N_RANKS) -> Rollout:
    """Rank `rank`'s contiguous rows, without the prompt/response columns that are padding in all
    of them: what this rank's own generator would have returned."""
    n = len(rollout["prompts"]) // n_ranks
    rows = slice(rank * n, (rank + 1) * n)
    prompt_mask, mask = rollout["prompt_mask"][rows], rollout["mask"][rows]
    P = int(prompt_mask.sum(-1).max())  # prompts are left-padded: keep the last P columns
    T = int(mask.sum(-1).max())  # responses are right-padded: keep the first T columns
    f = {k: v[rows] for k, v in rollout.items() if v is not None}
    return Rollout(
        prompts=f["prompts"], prompt_ids=f["prompt_ids"][:, -P:], prompt_mask=prompt_mask[:, -P:],
        response_ids=f["response_ids"][:, :T], mask=mask[:, :T], logprobs=f["logprobs"][:, :T],
        ref_logprobs=f["ref_logprobs"][:, :T], values=f["values"][:, :T], has_eos=f["has_eos"],
        response_texts=f["response_texts"],
        sampler_logprobs=f["sampler_logprobs"][:, :T] if "sampler_logprobs" in f else None,
    )


def params(trainer: PPOTrainer) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "policy": {k: v.detach().clone() for k, v in trainer.policy.named_parameters()},
        "value": {k: v.detach().clone() for k, v in trainer.value.named_parameters()},
    }


def launch(worker: str, outdir: Path, n_ranks: int = N_RANKS) -> dict:
    """Run `tests/<worker> OUTDIR` on `n_ranks` gloo ranks under torchrun; {rank: what it saved}."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_ranks}",
           str(ROOT / "tests" / worker), str(outdir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {r: torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(n_ranks)}


def start_rank(outdir: Path):
    """Join the process group; (rank, tokenizer, rollout) as the test process prepared them."""
    import torch.distributed as dist
    from transformers import AutoTokenizer

    dist.init_process_group("gloo")
    assert dist.get_world_size() == N_RANKS
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(outdir / "tokenizer")
    return dist.get_rank(), tokenizer, torch.load(outdir / "rollout.pt", weights_only=False)


def finish_rank(result: dict, outdir: Path, rank: int) -> None:
    import torch.distributed as dist

    torch.save(result, outdir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def main(outdir: Path) -> None:
    rank, tokenizer, rollout = start_rank(outdir)
    result: dict = {}

    for name, config in CONFIGS.items():
        t = make_trainer(config, tokenizer)
        local = shard(rollout, rank)
        exp = t.make_experience(local)
        result[name] = {"experience": {k: getattr(exp, k) for k in ("mask", "rewards", "advantages", "returns")},
                        "train_stats": t.update(exp), **params(t)}

    t = make_trainer(CONFIG_C, tokenizer, reward=arabic_fraction)
    stats = t.ppo_step(PROMPTS)  # the same 4 prompts on both ranks: only the seed tells them apart
    stats.pop("timings")  # wall times are per rank
    result["C"] = {"stats": stats, "kl_coef_after": t.kl_controller.value, **params(t)}

    try:
        make_trainer(PPOConfig(batch_size=9, minibatch_size=3), tokenizer)
    except ValueError as e:
        result["indivisible_error"] = str(e)
    try:
        t.ppo_step(PROMPTS * 2)  # 8 prompts on one rank: the global batch would be 16
    except ValueError as e:
        result["too_many_prompts_error"] = str(e)

    finish_rank(result, outdir, rank)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
