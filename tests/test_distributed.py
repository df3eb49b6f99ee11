"""Data-parallel PPO: 2 gloo ranks on B/2 rollouts each must make the single-process update on B.

One torchrun launch (tests/_dist_worker.py) does all the 2-rank work; this process prepares one
deterministic rollout, runs the single-process twins and compares.
"""
import math

import pytest
import torch

from ppolab import distributed as dist
from ppolab.advantage import masked_whiten
from ppolab.experience_buffer import ExperienceBuffer
from tests import _dist_worker as w
from tests.helpers import tiny_tokenizer

ATOL = 1e-5


def deterministic_rollout(trainer) -> dict:
    """8 rows with fixed response ids and EOS at fixed places, scored by the trainer's models.

    Lengths are chosen so rank 0's rows (the first 4) are all shorter than rank 1's longest:
    the ranks then hold responses of different widths T, as real rollouts would.
    """
    tok = trainer.tokenizer
    prompt_ids, prompt_mask = trainer.generator.encode_prompts(w.PROMPTS[:2] * 2 + w.PROMPTS[2:] * 2)
    g = torch.Generator().manual_seed(1234)
    special = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}
    ids = torch.randint(len(special), len(tok), (8, 10), generator=g)
    assert not any(i in special for i in ids.unique().tolist())
    for row, n in enumerate([3, 5, 2, 6, None, 7, 4, 9]):  # None: no EOS (length 10)
        if n is not None:
            ids[row, n - 1] = tok.eos_token_id
    roll = trainer.generator.score(w.PROMPTS[:2] * 2 + w.PROMPTS[2:] * 2, prompt_ids, prompt_mask, ids)
    return w.rollout_fields(roll)


class RankBuffers:
    """What N ranks' buffers serve together, as one process: rank r's buffer holds its rows and
    shuffles them as the rank does; each optimizer step's micro-batches are all ranks' ones."""

    def __init__(self, experience, n_ranks: int):
        n = len(experience) // n_ranks
        self.shards = []
        for r in range(n_ranks):
            b = ExperienceBuffer()
            b.add(experience.select(slice(r * n, (r + 1) * n)))
            self.shards.append(b)

    def __len__(self):
        return sum(len(b) for b in self.shards)

    def minibatches(self, minibatch_size, epochs, seed, micro_batch_size):
        per_rank = [b.minibatches(minibatch_size // len(self.shards), epochs, seed, micro_batch_size)
                    for b in self.shards]
        for steps in zip(*per_rank):
            yield [mb for step in steps for mb in step]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Launch 2 ranks once; return (rollout, {rank: results})."""
    out = tmp_path_factory.mktemp("dist")
    tok = tiny_tokenizer()
    tok.save_pretrained(out / "tokenizer")
    rollout = deterministic_rollout(w.make_trainer(w.CONFIGS["A"], tok))
    torch.save(rollout, out / "rollout.pt")
    return rollout, w.launch("_dist_worker.py", out)


def _assert_params_close(got: dict, want: dict, what: str):
    for part in ("policy", "value"):
        assert got[part].keys() == want[part].keys()
        for k, v in want[part].items():
            diff = (got[part][k] - v).abs().max().item()
            assert diff <= ATOL, f"{what} {part}.{k}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("name", ["A", "B"])
def test_two_ranks_make_the_single_process_update(runs, name):
    rollout, ranks = runs
    single = w.make_trainer(w.CONFIGS[name], tiny_tokenizer())
    before = w.params(single)
    exp = single.make_experience(w.shard(rollout, 0, n_ranks=1))
    if name == "A":  # one minibatch of all 8 rows: the ordinary single-process update
        stats = single.update(exp)
    else:  # minibatches of 2 rows per rank: step on the union of what the ranks stepped on
        stats = single._update(RankBuffers(exp, w.N_RANKS), n_response=exp.mask.shape[1])
    after = w.params(single)
    assert any(not torch.equal(after["policy"][k], v) for k, v in before["policy"].items())

    n = len(exp) // w.N_RANKS
    for r, res in ranks.items():
        got = res[name]["experience"]
        T = got["mask"].shape[1]
        want_mask = exp.mask[r * n : (r + 1) * n]
        assert torch.equal(got["mask"], want_mask[:, :T]) and not want_mask[:, T:].any()
        for key in ("advantages", "rewards", "returns"):  # global whitening moments: same values
            want = getattr(exp, key)[r * n : (r + 1) * n, :T]
            diff = torch.where(want_mask[:, :T].bool(), got[key] - want, 0.0).abs().max().item()
            assert diff <= ATOL, f"rank {r} {key}: max abs diff {diff:.2e}"
        _assert_params_close(res[name], after, f"rank {r}")
        for k, v in stats.items():  # losses, clipfrac, grad_norm...: global token-weighted means
            assert math.isclose(res[name]["train_stats"][k], v, rel_tol=1e-4, abs_tol=1e-6), (k, v)
    # The ranks differ only by reduction order of identical sums: bitwise equal parameters.
    for part in ("policy", "value"):
        assert all(torch.equal(ranks[0][name][part][k], ranks[1][name][part][k]) for k in ranks[0][name][part])


def test_full_ppo_step_under_two_ranks(runs):
    _, ranks = runs
    s0, s1 = ranks[0]["C"]["stats"], ranks[1]["C"]["stats"]
    assert s0 == s1  # every logged statistic is global, so both ranks log the same step
    for k in ("score_mean", "reward_mean", "kl", "kl_per_token", "policy_loss", "value_loss", "clipfrac",
              "approx_kl", "entropy", "grad_norm", "response_length", "eos_fraction"):
        assert math.isfinite(s0[k]), k
    texts = s0["generated_texts"]
    assert len(texts) == len(s0["scores"]) == 8
    assert texts[:4] != texts[4:]  # same prompts on both ranks, sampled with seed + rank
    assert ranks[0]["C"]["kl_coef_after"] == ranks[1]["C"]["kl_coef_after"]
    for part in ("policy", "value"):
        assert all(torch.equal(ranks[0]["C"][part][k], ranks[1]["C"][part][k]) for k in ranks[0]["C"][part])
    assert "divisible by the world size 2" in ranks[0]["indivisible_error"]
    assert "over 2 ranks: 4 per rank" in ranks[0]["too_many_prompts_error"]


# -- in-process: the helpers are the single-process computation without a process group ----------
def test_helpers_are_identity_without_a_process_group():
    assert not dist.is_distributed() and dist.world_size() == 1 and dist.rank() == 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    mask = torch.arange(6) < torch.tensor([[2], [6], [1], [4]])  # ones then zeros
    for shift in (True, False):
        assert torch.equal(dist.global_masked_whiten(x, mask, shift_mean=shift), masked_whiten(x, mask, shift))
    assert dist.all_sum(3.5) == 3.5 and dist.all_sum({"a": 1.0}) == {"a": 1.0}
    assert dist.all_gather_rows(x, mask)[1] is mask and dist.all_gather_objects(["a"]) == ["a"]


def test_whiten_with_given_moments():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mean, var = dist.global_masked_moments(x, mask)  # no group: the batch's own moments
    assert torch.allclose(masked_whiten(x, mask, mean=mean, var=var), masked_whiten(x, mask), atol=1e-6)
    assert torch.allclose(masked_whiten(x, mask, mean=1.0, var=4.0), (x - 1.0) / math.sqrt(4.0 + 1e-8))
    with pytest.raises(ValueError, match="both mean and var"):
        masked_whiten(x, mask, mean=mean)


def test_batch_sizes_must_divide_by_the_world_size():
    assert dist.check_batch_sizes(16, 8, 2, 4) == (4, 2)
    assert dist.check_batch_sizes(16, 4, 0, 1) == (16, 4)
    with pytest.raises(ValueError, match="batch_size=9 is global and must be divisible by the world size 2"):
        dist.check_batch_sizes(9, 3, 0, 2)
    with pytest.raises(ValueError, match="minibatch_size=6 is global"):
        dist.check_batch_sizes(12, 6, 0, 4)
    with pytest.raises(ValueError, match=r"micro_batch_size=4 \(per rank\) .* 4 / 2 = 2"):
        dist.check_batch_sizes(8, 4, 4, 2)


def test_placement_settings_are_checked_and_one_process_never_shards():
    assert dist.resolve_sharding(None) == "none" and dist.resolve_sharding("fsdp") == "none"
    with pytest.raises(ValueError, match="ModelConfig.sharding: must be null, 'none' or 'fsdp', got 'ddp'"):
        dist.configure(sharding="ddp")
    with pytest.raises(ValueError, match="ModelConfig.mixed_precision: must be null or 'bf16'"):
        dist.configure(mixed_precision="fp8")
    from ppolab.config import ConfigError, ModelConfig
    with pytest.raises(ConfigError, match="ModelConfig.sharding"):
        ModelConfig(sharding="zero3").validate()
    policy = w.make_trainer(w.CONFIGS["A"], tiny_tokenizer()).policy
    assert not dist.is_sharded(policy)
    with dist.gathered(policy):  # nothing sharded: a no-op
        pass
