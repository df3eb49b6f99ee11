"""The invariance suite: for every loss aggregation mode and every advantage estimator, one update
(make_experience + update; parameters after, and every logged statistic) is the same whether the
minibatch of B = 8 rows is

* one backward pass (the reference),
* micro-batches of B/2 or B/4 rows with gradient accumulation,
* B/2 rows on each of 2 data-parallel ranks, every model sharded with FSDP2, whole or in
  micro-batches of one row (one torchrun launch with gloo for all cases).

Peers get this wrong for the seq-mean modes (a micro-batch weighted by its tokens instead of its
rows changes the loss). The cases live in tests/_invariance_worker.py: add a mode or an estimator
there and it is checked here in all three ways.
"""
import functools
import math

import pytest
import torch

from tests import _invariance_worker as iw
from tests._dist_worker import launch
from tests.helpers import tiny_tokenizer

ATOL = 2e-6  # float32 sums in another order; a wrong weighting moves parameters by >= 1e-3


@functools.lru_cache(maxsize=None)
def rollout() -> dict:
    return iw.deterministic_rollout(tiny_tokenizer())


@functools.lru_cache(maxsize=None)
def one_backward(case: str):
    """The reference: the whole minibatch in one forward/backward, one process."""
    return iw.update(case, tiny_tokenizer(), rollout())


@functools.lru_cache(maxsize=None)
def initial_params(case: str) -> dict:
    return iw.params(iw.make_trainer(case, tiny_tokenizer()))


def assert_same_update(got, want, case: str, what: str):
    (got_params, got_stats), (want_params, want_stats) = got, want
    assert got_params.keys() == want_params.keys()
    moved = max((want_params[k] - v).abs().max().item() for k, v in initial_params(case).items())
    assert moved > 1e-3, f"{what}: the update barely moves the parameters ({moved:.1e}); nothing is tested"
    for k, v in want_params.items():
        diff = (got_params[k] - v).abs().max().item()
        assert diff <= ATOL, f"{what}: {k} differs by {diff:.2e}"
    assert got_stats.keys() == want_stats.keys()
    for k, v in want_stats.items():
        assert math.isclose(got_stats[k], v, rel_tol=1e-5, abs_tol=1e-6), f"{what}: {k} {got_stats[k]} != {v}"


@pytest.mark.parametrize("micro_batch_size", [iw.B // 2, iw.B // 4])
@pytest.mark.parametrize("case", iw.CASES)
def test_gradient_accumulation_makes_the_same_update(case, micro_batch_size):
    got = iw.update(case, tiny_tokenizer(), rollout(), micro_batch_size=micro_batch_size)
    assert_same_update(got, one_backward(case), case, f"{case}, micro-batches of {micro_batch_size}")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Launch 2 ranks once for all cases; {rank: {case: (params, stats)}}."""
    out = tmp_path_factory.mktemp("invariance")
    tiny_tokenizer().save_pretrained(out / "tokenizer")
    torch.save(rollout(), out / "rollout.pt")
    return launch("_invariance_worker.py", out, iw.N_RANKS)


@pytest.mark.parametrize("micro_batch_size", iw.RANK_MICRO_BATCHES)
@pytest.mark.parametrize("case", iw.CASES)
def test_two_ranks_make_the_same_update(ranks, case, micro_batch_size):
    for r in range(iw.N_RANKS):
        assert_same_update(ranks[r][(case, micro_batch_size)], one_backward(case), case,
                           f"{case}, rank {r} of {iw.N_RANKS}, micro-batches of {micro_batch_size or 'all'} rows")


@pytest.mark.parametrize("case", [c for c in iw.CASES if c.startswith("clip:")])
def test_clip_cases_clip(case):
    """The clipping variant must clip (the norm before clipping is over the limit), so the 2-rank
    runs compare a global norm over DTensor shards with the single-process one."""
    _, stats = one_backward(case)
    assert stats["grad_norm"] > iw.VARIANTS["clip"]["max_grad_norm"] * 2
