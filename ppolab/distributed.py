"""Data parallelism for `PPOTrainer` under `torchrun`: the few collectives a PPO step needs.

Launch with `torchrun --nproc_per_node=N script.py`; the script calls
`torch.distributed.init_process_group()` (gloo on CPU, NCCL on GPU, after
`torch.cuda.set_device(local_rank)`) before building the trainer. Each rank then
passes its own `PPOConfig.batch_size / N` prompts to `ppo_step` and the step is
*the same step* as one process on the N shards concatenated:

* whitening uses global moments (`global_masked_whiten`);
* each micro-batch's loss weight is its token count over the **global** minibatch
  token count, and gradients are SUM-all-reduced (`all_reduce_gradients`), so the
  summed gradient is exactly the single-process token-weighted one; gradient
  clipping then sees the same global norm on every rank;
* logged statistics are sums or gathers over all ranks (`all_sum`, `all_gather_rows`).

Every function here is the identity (or the plain single-process computation) when
`torch.distributed` is not initialised or has one rank, so single-process code pays
nothing and computes exactly what it computed before.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from ._checks import check_floating, check_mask, check_same_shape
from .advantage.whiten import masked_whiten


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _device() -> torch.device:
    """Where collective buffers must live: NCCL only moves CUDA tensors; gloo is used with CPU ones.

    `init_process_group()` without a backend registers both ("cpu:gloo,cuda:nccl"): prefer NCCL then.
    """
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_batch_sizes(batch_size: int, minibatch_size: int, micro_batch_size: int, n_ranks: int) -> tuple[int, int]:
    """Per-rank `(batch, minibatch)` rows for global `PPOConfig` sizes; indivisible sizes are errors.

    `batch_size` and `minibatch_size` are global (all ranks together); `micro_batch_size`
    (0 = the per-rank minibatch) is per rank: it is a memory knob of one device.
    """
    for name, value in (("batch_size", batch_size), ("minibatch_size", minibatch_size)):
        if value % n_ranks:
            raise ValueError(
                f"PPOConfig.{name}={value} is global and must be divisible by the world size {n_ranks} "
                f"(each rank takes {name} / {n_ranks} rows)"
            )
    local_batch, local_minibatch = batch_size // n_ranks, minibatch_size // n_ranks
    if micro_batch_size and local_minibatch % micro_batch_size:
        raise ValueError(
            f"PPOConfig.micro_batch_size={micro_batch_size} (per rank) must divide the per-rank minibatch "
            f"minibatch_size / world size = {minibatch_size} / {n_ranks} = {local_minibatch}"
        )
    return local_batch, local_minibatch


# -- sums and gathers ----------------------------------------------------------------------------
def all_sum(values: float | dict[str, float]) -> float | dict[str, float]:
    """Sum over ranks of a Python float, or of a dict of floats (same keys on every rank).

    Reduced in float64, one collective for the whole dict. Returned as given without a group.
    """
    if not is_distributed():
        return values
    if not isinstance(values, dict):
        return all_sum({"": values})[""]
    keys = sorted(values)  # the same wire order on every rank, whatever order the dicts were filled in
    buf = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(buf)
    summed = dict(zip(keys, buf.tolist()))
    return {k: summed[k] for k in values}


def all_gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each rank's rows, in rank order: `[B_r, ...]` -> `[sum_r B_r, ...]`.

    Ranks may hold different row counts and different sizes in the other dims (each rank's
    responses are as long as its own longest one): every tensor is zero-padded at the end of
    each dim to the largest size over ranks before gathering, then rows are trimmed back.
    Zero padding is right for the `[B, T]` per-token tensors here: masks, and values that
    are 0 on padding. Bool tensors travel as uint8. Returned as given without a group.
    """
    if not is_distributed():
        return tensors
    n, device = world_size(), _device()
    # One collective for all shapes: [tensors, dims], padded with 1s to the largest tensor rank
    # (the code is the same on every rank, so each tensor has the same number of dims everywhere).
    ndim = max((t.dim() for t in tensors), default=0)
    shapes = torch.tensor([list(t.shape) + [1] * (ndim - t.dim()) for t in tensors], dtype=torch.long, device=device)
    gathered = [torch.empty_like(shapes) for _ in range(n)]
    dist.all_gather(gathered, shapes)
    all_shapes = torch.stack(gathered)  # [ranks, tensors, dims]
    out = []
    for i, t in enumerate(tensors):
        biggest = all_shapes[:, i, : t.dim()].amax(0).tolist()
        wire = t.to(device, torch.uint8 if t.dtype == torch.bool else t.dtype)
        padded = wire.new_zeros(biggest)
        padded[tuple(slice(0, s) for s in t.shape)] = wire
        pieces = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(pieces, padded)
        rows = [piece[: int(all_shapes[r, i, 0])] for r, piece in enumerate(pieces)]
        out.append(torch.cat(rows).to(t.device, t.dtype))
    return tuple(out)


def all_gather_objects(items: list) -> list:
    """Concatenate each rank's list of picklable items (e.g. texts), in rank order."""
    if not is_distributed():
        return items
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, list(items))
    return [x for part in gathered for x in part]


def check_same_across_ranks(value: int, what: str) -> None:
    """Every rank must hold the same `value` (else collectives would pair up wrongly and hang)."""
    if not is_distributed():
        return
    buf = torch.tensor([value], dtype=torch.long, device=_device())
    gathered = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(gathered, buf)
    values = [int(g) for g in gathered]
    if len(set(values)) > 1:  # every rank sees the same list, so every rank raises
        raise ValueError(f"{what} differ across ranks: {values} (rank order); they must be equal")


# -- global whitening ----------------------------------------------------------------------------
def global_masked_moments(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True):
    """Mean and variance of `x` over the valid tokens of **all** ranks: `masked_mean`/`masked_var`
    of the concatenated batch, computed from local sums.

    Two passes like `masked_var` (sum and count, then the sum of squares about the global
    mean), so no catastrophic cancellation; reduced in float64. Results are 0-dim tensors in
    the statistics dtype of `masked_whiten` (at least float32). Without a group: this batch's.
    """
    check_floating(x=x)
    check_same_shape(x=x, mask=mask)
    mask = check_mask(mask)
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    xs = x.to(stat_dtype)
    sum_count = torch.stack([torch.where(mask, xs, 0.0).sum().double(), mask.sum().double()])
    sum_count = _all_reduce(sum_count)
    n = sum_count[1]
    mean = sum_count[0] / n
    square_sum = _all_reduce(torch.where(mask, xs.double() - mean, 0.0).square().sum())
    # With one valid token in all, the Bessel-corrected variance is defined as 0 (see masked_var).
    var = square_sum / ((n - 1).clamp_min(1) if unbiased else n)
    return mean.to(stat_dtype), var.to(stat_dtype)


def global_masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """`masked_whiten` with the mean and variance of all ranks' valid tokens.

    Without a group it *is* `masked_whiten(x, mask, shift_mean, eps)`, bit for bit.
    """
    if not is_distributed():
        return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
    mean, var = global_masked_moments(x, mask)
    return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps, mean=mean, var=var)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """SUM over ranks of a small tensor, moved to the collective device and back."""
    if not is_distributed():
        return t
    buf = t.to(_device())
    dist.all_reduce(buf)
    return buf.to(t.device)


# -- gradients and weights -----------------------------------------------------------------------
def all_reduce_gradients(params: Iterable[nn.Parameter], bucket_numel: int = 1 << 24) -> None:
    """SUM-all-reduce `.grad` of `params` in place (no averaging: the trainer's loss weights are
    already fractions of the global token count).

    A parameter that got no gradient on this rank (say an MoE expert no local token was routed
    to) but did on another gets zeros here, as the single-process sum would; one that got none
    anywhere keeps `grad=None`, so the optimizer still skips it. Gradients travel flattened in
    buckets of at most `bucket_numel` elements per (device, dtype), one collective per bucket.
    """
    if not is_distributed():
        return
    # A tensor listed twice (a trunk shared by two optimizers) must be reduced once, not doubled.
    params = list({id(p): p for p in params if p.requires_grad}.values())
    if not params:
        return
    device = _device()
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    grads = []
    for p, anywhere in zip(params, has_grad.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
        if anywhere:
            grads.append(p.grad)
    groups: dict[tuple, list[torch.Tensor]] = {}  # same order on every rank: params come in order
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for group in groups.values():
        for bucket in _buckets(group, bucket_numel):
            flat = torch.cat([g.reshape(-1) for g in bucket]).to(device)
            dist.all_reduce(flat)
            for g, piece in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(piece.view(g.shape))


def _buckets(tensors: list[torch.Tensor], max_numel: int):
    """Consecutive runs of `tensors` of at most `max_numel` elements (a bigger tensor goes alone)."""
    bucket, size = [], 0
    for t in tensors:
        if bucket and size + t.numel() > max_numel:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


@torch.no_grad()
def broadcast_modules(*modules: nn.Module | None, src: int = 0) -> None:
    """Copy every parameter and buffer of `modules` from rank `src` to all ranks (as DDP does at
    construction), so that all ranks start from the same weights even if one was built with a
    different seed. Tensors shared between modules are sent once. `None` entries are skipped.
    """
    if not is_distributed():
        return
    device, seen = _device(), set()
    for module in modules:
        if module is None:
            continue
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.data_ptr() in seen or t.numel() == 0:
                continue
            seen.add(t.data_ptr())
            data = t.data
            wire = data.to(device)
            dist.broadcast(wire, src=src)
            if wire.data_ptr() != data.data_ptr():  # it travelled through a copy on the collective device
                data.copy_(wire)


def prepare_models(policy: nn.Module, ref: nn.Module | None, value: nn.Module | None, reward, config=None):
    """Place the trainer's models for this process group; returns `(policy, ref, value, reward)`.

    The one placement seam of `PPOTrainer.__init__` (`config`: its PPOConfig). Today: replicas,
    broadcast from rank 0 (`broadcast_modules`; a no-op in one process); `reward` may be a plain
    callable, which is returned as it is.
    """
    broadcast_modules(policy, ref, value, reward if isinstance(reward, nn.Module) else None)
    return policy, ref, value, reward
