"""The cases of tests/test_invariance.py and its data-parallel side: one rank of
`python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_invariance_worker.py OUTDIR`.

OUTDIR holds `rollout.pt` (one deterministic 8-row rollout) and `tokenizer/`. Each rank takes its 4
rows, runs make_experience + update for every case and saves `rank{r}.pt`. The test process imports
the same helpers, so both sides build exactly the same trainers.

To cover a new aggregation mode or estimator, add it to `MODES` or `ESTIMATORS` (or a case to
`CASES`): every case is checked for micro-batches of B/2 and B/4 rows, and on 2 ranks (FSDP2-sharded
models under torchrun) without micro-batches and with micro-batches of one row per rank.

A case is `"estimator/mode"` on the full policy with a separate value model, or
`"variant:estimator/mode"` on another model set (`VARIANTS`): a LoRA or full policy with the value
head on its own trunk, or gradient clipping on.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, the tests package is not importable otherwise
    sys.path.insert(0, str(ROOT))

from ppolab import distributed  # noqa: E402
from ppolab.config import GenerationConfig, ModelConfig, PPOConfig  # noqa: E402
from ppolab.models import Reference, ValueModel, build_policy, value_head_on_policy  # noqa: E402
from ppolab.ppo.trainer import PPOTrainer  # noqa: E402
from tests._dist_worker import PROMPTS, finish_rank, length_reward, rollout_fields, shard, start_rank  # noqa: E402

B, N_RANKS, RESPONSE_WIDTH = 8, 2, 10
MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp")
# Every case also clips asymmetrically, dual-clips and has an entropy bonus, so those terms are
# accumulated too; the group estimators put the KL in the loss (GRPO style), the others in the reward.
COMMON = dict(batch_size=B, minibatch_size=B, ppo_epochs=2, group_size=2, max_grad_norm=0.0, seed=0,
              clip_eps_high=0.28, dual_clip=1.5, entropy_coef=0.01, kl_coef=0.05, kl_loss_coef=0.1)
KL_IN = {"gae": "reward", "reinforce_pp": "reward", "grpo": "loss", "dr_grpo": "loss", "rloo": "loss"}
CASES = {
    f"{estimator}/{mode}": dict(COMMON, advantage_estimator=estimator, loss_aggregation=mode, kl_in=KL_IN[estimator])
    for estimator in ESTIMATORS for mode in MODES
}
# Model sets beyond the full policy + separate value model, each run on a few (estimator, mode) pairs:
# a critic (gae) shares the trunk; a critic-free estimator runs the policy alone.
VARIANTS = {
    "lora-shared": dict(lora=True, value="shared"),
    "full-shared": dict(lora=False, value="shared"),
    "clip": dict(lora=False, value="separate", max_grad_norm=0.05),
}
for _variant in VARIANTS:
    for _estimator in ("gae", "grpo"):
        for _mode in (MODES if _variant != "clip" else MODES[:2]):
            CASES[f"{_variant}:{_estimator}/{_mode}"] = dict(CASES[f"{_estimator}/{_mode}"])
SGD_LR = 0.5
# Micro-batch sizes (per rank) the 2-rank launch runs: each rank's minibatch is B/2 = 4 rows.
RANK_MICRO_BATCHES = (0, 1)


def make_trainer(case: str, tokenizer, micro_batch_size: int = 0) -> PPOTrainer:
    """The case's trainer on the same tiny seeded models everywhere, with plain SGD.

    SGD makes the update the gradient itself: Adam's first steps are nearly lr * sign(g), and would
    hide a loss that is right up to a constant factor (a micro-batch weighted twice, say).
    """
    variant = VARIANTS[case.split(":")[0]] if ":" in case else {"lora": False, "value": "separate"}
    config = PPOConfig(**{**CASES[case], **{k: v for k, v in variant.items() if k == "max_grad_norm"}},
                       micro_batch_size=micro_batch_size)
    cfg = ModelConfig(arch="llama", hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=64, seed=0,
                      lora=variant["lora"])
    policy = build_policy(cfg, tokenizer)
    value = None
    if not config.critic_free:
        value = value_head_on_policy(policy) if variant["value"] == "shared" else ValueModel.from_policy(policy)
    t = PPOTrainer(config, policy, Reference(policy), value, length_reward, tokenizer,
                   GenerationConfig(max_new_tokens=RESPONSE_WIDTH))
    # Under torchrun the trainer has sharded every model (dist.prepare_models): the SGD optimizers
    # below take the FSDP2 shards (DTensors), as the trainer's own AdamW does.
    t.policy_optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=SGD_LR)
    if value is not None:
        t.value_optimizer = torch.optim.SGD(value.trainable_parameters(), lr=SGD_LR)
    return t


def deterministic_rollout(tokenizer) -> dict:
    """8 rows, two samples of each prompt in consecutive rows, with fixed response ids and EOS at
    fixed places (rank 0's rows are all shorter than rank 1's longest, so the ranks hold responses
    of different widths). The rollout-time log-probs are shifted by fixed noise, so the very first
    step already has ratios away from 1 (clipping at work) and a non-zero KL to the reference."""
    trainer = make_trainer("gae/token-mean", tokenizer)  # with a value model: GAE needs values
    tok = trainer.tokenizer
    prompts = [p for p in PROMPTS for _ in range(2)]
    prompt_ids, prompt_mask = trainer.generator.encode_prompts(prompts)
    g = torch.Generator().manual_seed(1234)
    special = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}
    ids = torch.randint(len(special), len(tok), (B, RESPONSE_WIDTH), generator=g)
    assert not any(i in special for i in ids.unique().tolist())
    for row, n in enumerate([3, 5, 2, 6, None, 7, 4, 9]):  # None: no EOS (full width)
        if n is not None:
            ids[row, n - 1] = tok.eos_token_id
    fields = rollout_fields(trainer.generator.score(prompts, prompt_ids, prompt_mask, ids))
    fields["logprobs"] = fields["logprobs"] + 0.3 * torch.randn(fields["logprobs"].shape, generator=g)
    fields["ref_logprobs"] = fields["ref_logprobs"] + 0.3 * torch.randn(fields["logprobs"].shape, generator=g)
    return fields


def params(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    named = dict(trainer.policy.named_parameters())
    if trainer.value is not None:
        named.update({f"value.{k}": v for k, v in trainer.value.named_parameters()})
    return {k: distributed.full_tensor(v.detach()).clone() for k, v in named.items()}


def update(case: str, tokenizer, rollout: dict, rank: int = 0, n_ranks: int = 1, micro_batch_size: int = 0):
    """One `make_experience` + `update` of the case on this rank's rows: (parameters after, stats)."""
    t = make_trainer(case, tokenizer, micro_batch_size)
    stats = t.update(t.make_experience(shard(rollout, rank, n_ranks)))
    return params(t), stats


def main(outdir: Path) -> None:
    rank, tokenizer, rollout = start_rank(outdir)
    results = {(case, mb): update(case, tokenizer, rollout, rank, N_RANKS, mb)
               for case in CASES for mb in RANK_MICRO_BATCHES}
    finish_rank(results, outdir, rank)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
