"""Data parallelism for `PPOTrainer` under `torchrun`: model sharding and the few collectives a PPO step needs.

Launch with `torchrun --nproc_per_node=N script.py`; the script calls
`torch.distributed.init_process_group()` (gloo on CPU, NCCL on GPU, after
`torch.cuda.set_device(local_rank)`) before building the trainer. Each rank then
passes its own `PPOConfig.batch_size / N` prompts to `ppo_step` and the step is
*the same step* as one process on the N shards concatenated:

* the models are placed by `prepare_models`: by default (`ModelConfig.sharding`) every
  model is sharded with FSDP2 (`shard_models`: each decoder layer, the embeddings with a
  tied head, the trunk, the root), so a rank holds 1/N of the parameters, gradients and
  optimizer state and gathers a layer's parameters only while it runs; with
  `sharding="none"` each rank holds a whole replica, broadcast from rank 0;
* whitening uses global moments (`global_masked_whiten`);
* each micro-batch's loss weight is its token count over the **global** minibatch
  token count, and gradients are SUM-reduced: FSDP2 reduce-scatters the sharded
  parameters' gradients in backward with a plain SUM (`set_gradient_divide_factor(1.0)`),
  `all_reduce_gradients` SUM-all-reduces the replicated ones; so the summed gradient is
  exactly the single-process token-weighted one, and gradient clipping (over DTensor
  shards, `clip_grad_norm_`) sees the same global norm on every rank;
* logged statistics are sums or gathers over all ranks (`all_sum`, `all_gather_rows`).

Every function here is the identity (or the plain single-process computation) when
`torch.distributed` is not initialised or has one rank, so single-process code pays
nothing and computes exactly what it computed before.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

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

    Parameters sharded by FSDP2 (DTensors) are skipped: their gradients were reduced in backward.
    A parameter that got no gradient on this rank (say an MoE expert no local token was routed
    to) but did on another gets zeros here, as the single-process sum would; one that got none
    anywhere keeps `grad=None`, so the optimizer still skips it. Gradients travel flattened in
    buckets of at most `bucket_numel` elements per (device, dtype), one collective per bucket.
    """
    if not is_distributed():
        return
    # A tensor listed twice (a trunk shared by two optimizers) must be reduced once, not doubled.
    # FSDP2 has already SUM-reduce-scattered the gradients of sharded (DTensor) parameters in backward.
    params = list({id(p): p for p in params if p.requires_grad and not isinstance(p, DTensor)}.values())
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


# -- model placement: FSDP2 shards or replicas ---------------------------------------------------
SHARDINGS = ("none", "fsdp")
MIXED_PRECISIONS = (None, "bf16")
# What `prepare_models` uses when its config says nothing (PPOConfig has no model fields): set
# from the run's ModelConfig with `configure(model_config)` before building the trainer.
_placement: dict = {"sharding": None, "mixed_precision": None}


def configure(model_config=None, *, sharding: str | None = None, mixed_precision: str | None = None) -> None:
    """Set how `prepare_models` places models: from a `ModelConfig` (its `sharding` and
    `mixed_precision`) or the keywords. None everywhere: FSDP2 when the world size is > 1."""
    if model_config is not None:
        sharding = sharding or getattr(model_config, "sharding", None)
        mixed_precision = mixed_precision or getattr(model_config, "mixed_precision", None)
    _check_placement(sharding, mixed_precision)
    _placement.update(sharding=sharding, mixed_precision=mixed_precision)


def _check_placement(sharding, mixed_precision) -> None:
    if sharding is not None and sharding not in SHARDINGS:
        raise ValueError(f"ModelConfig.sharding: must be null, 'none' or 'fsdp', got {sharding!r}")
    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"ModelConfig.mixed_precision: must be null or 'bf16', got {mixed_precision!r}")


def resolve_sharding(sharding: str | None) -> str:
    """"fsdp" or "none" for this process group: None means "fsdp" when the world size is > 1;
    one process never shards (there is nothing to shard over)."""
    _check_placement(sharding, None)
    if not is_distributed():
        return "none"
    return sharding or "fsdp"


def prepare_models(policy: nn.Module, ref: nn.Module | None, value: nn.Module | None, reward, config=None):
    """Place the trainer's models for this process group; returns `(policy, ref, value, reward)`.

    The one placement seam of `PPOTrainer.__init__`. Every rank first takes rank 0's weights
    (`broadcast_modules`), so ranks that built or loaded their models differently still start
    alike; then, with sharding "fsdp" (the default under torchrun), `shard_models` shards them in
    place. `config` may carry `sharding` / `mixed_precision` (else `configure`'s). `reward` may
    be a plain callable, returned as it is. A no-op in one process.
    """
    if not is_distributed():
        return policy, ref, value, reward
    sharding = resolve_sharding(getattr(config, "sharding", None) or _placement["sharding"])
    mixed_precision = getattr(config, "mixed_precision", None) or _placement["mixed_precision"]
    if mixed_precision is not None and sharding != "fsdp":
        raise ValueError(f"ModelConfig.mixed_precision={mixed_precision!r} needs sharding 'fsdp' (FSDP2's "
                         f"MixedPrecisionPolicy), got sharding {sharding!r}")
    broadcast_modules(policy, ref, value, reward if isinstance(reward, nn.Module) else None)
    if sharding == "fsdp":
        shard_models(policy, ref, value, reward, mixed_precision=mixed_precision)
    return policy, ref, value, reward


def shard_models(policy: nn.Module, ref: nn.Module | None, value: nn.Module | None, reward,
                 mixed_precision: str | None = None) -> None:
    """Shard every model with FSDP2 (`fully_shard`), in place, over all ranks of the process group.

    Each model is one FSDP tree: each decoder layer is a unit (gathered while it runs), the input
    embeddings are one together with a head tied to them (`fully_shard([embed, head])`, the
    tied weight is one parameter), an untied head is its own, the trunk's remaining parameters
    (final norm) one, and the root. The units are what ppolab calls directly: the trunk alone
    (`base_trunk`), the head chunk by chunk (`token_attribution.logprobs`), a value head on the
    hidden states, so each gathers its own parameters whatever called it.

    * policy: a causal LM, LoRA or not (the adapters live inside the layer units; the reference
      with the adapter disabled runs the same units);
    * ref: a `Reference` holding its own frozen copy is sharded like the policy; one that
      shares the policy's weights has nothing of its own;
    * value: a `ValueModel`; on the policy's own trunk (`shares_trunk`) only its head is new
      and sharded (the trunk already is, once); else a tree of its own;
    * reward: a `RewardModel`, or a Hugging Face sequence classifier (trunk + `score` head);
      a plain callable is left alone.

    Frozen models are sharded too (no gradients, no optimizer state). `mixed_precision="bf16"`:
    parameters are gathered and computed in bfloat16, gradients reduced in float32
    (`MixedPrecisionPolicy`). Gradients reduce as a plain SUM (the trainer's loss weights are
    global shares), never divided by the world size.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from .models import Reference, ScalarModel
    from .models.builders import base_trunk, is_peft

    mesh = init_device_mesh(_device().type, (world_size(),))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if mixed_precision == "bf16" else MixedPrecisionPolicy())
    kw = {"mesh": mesh, "mp_policy": mp}

    def shard_lm(model: nn.Module) -> None:
        inner = model.get_base_model() if is_peft(model) else model
        _shard_tree(model, base_trunk(model), [inner.get_output_embeddings()], kw)

    def shard_scalar(model: nn.Module) -> None:
        if isinstance(model, ScalarModel):
            _shard_tree(model, model.backbone, [model.head], kw)
        elif isinstance(getattr(model, "score", None), nn.Module):  # a Hugging Face sequence classifier
            _shard_tree(model, base_trunk(model), [model.score], kw)
        else:
            raise TypeError(f"shard_models: cannot shard a {type(model).__name__}; expected a ppolab "
                            "ScalarModel or a Hugging Face model with a `score` head")

    shard_lm(policy)
    if isinstance(ref, Reference):
        if ref.model is not None:
            shard_lm(ref.model)
    elif isinstance(ref, nn.Module):
        shard_lm(ref)
    if value is not None:
        if getattr(value, "shares_trunk", False):
            _shard_root(value.head, kw)  # the trunk is the policy's, sharded with it
        else:
            shard_scalar(value)
    if isinstance(reward, nn.Module):
        shard_scalar(reward)


def _decoder_layers(trunk: nn.Module) -> list[nn.Module]:
    layers = getattr(trunk, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(f"shard_models: {type(trunk).__name__} has no `layers` list of decoder layers to shard")
    return list(layers)


def _shard_tree(root: nn.Module, trunk: nn.Module, heads: list[nn.Module], kw: dict) -> None:
    """FSDP2 units bottom-up: layers, [embeddings + tied heads], untied heads, trunk, root."""
    from torch.distributed.fsdp import fully_shard

    for layer in _decoder_layers(trunk):
        fully_shard(layer, **kw)
    embed = trunk.get_input_embeddings()
    tied = [h for h in heads if any(p is embed.weight for p in h.parameters())]
    fully_shard([embed, *tied] if tied else embed, **kw)
    for head in tied:  # called alone (chunked log-probs) outside the trunk's forward
        head.register_forward_hook(_finish_grouped_call_without_grad, always_call=True)
    for head in heads:
        if head not in tied and any(True for _ in head.parameters()):
            fully_shard(head, **kw)
    fully_shard(trunk, **kw)
    if root is not trunk:
        fully_shard(root, **kw)
    _init_root(root)


def _shard_root(module: nn.Module, kw: dict) -> None:
    from torch.distributed.fsdp import fully_shard

    fully_shard(module, **kw)
    _init_root(module)


def _init_root(root: nn.Module) -> None:
    """Make `root` the root of its FSDP tree now, and every reduction a plain SUM.

    FSDP2 takes as root the first unit to run forward; ppolab runs units directly (the trunk,
    a head), which would then each claim to be a root of its own. Lazy initialisation from the
    real root settles it before any forward (private API: `FSDPState._lazy_init`).
    """
    from torch.distributed.fsdp import FSDPModule

    root._get_fsdp_state()._lazy_init()
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # SUM, not mean: the loss weights are global shares
            m.set_force_sum_reduction_for_comms(True)  # ReduceOp.SUM (gloo has no PREMUL_SUM)


def _finish_grouped_call_without_grad(module: nn.Module, args, output):
    """After a no-grad call of a head grouped with the embeddings: finish the group's forward.

    FSDP2 completes a grouped unit when all its modules have run, or at the backward; a head
    called alone without gradients (reference scoring, sampling) has neither, and the group
    would stay gathered and half-open, which makes the next backward reduce its gradients
    twice. Finishing it here reshards it, as FSDP does for a group that ran whole.
    """
    if torch.is_grad_enabled():
        return None
    from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

    state = module._get_fsdp_state()
    if not state._modules_to_run_forward:
        return None
    for group in state._fsdp_param_groups:
        group.post_forward(None, None, output)
    state._modules_to_run_forward.clear()
    state._training_state = TrainingState.IDLE
    if state._state_ctx.iter_forward_root is state:
        state._state_ctx.iter_forward_root = None
    return None


def is_sharded(model: nn.Module | None) -> bool:
    """True when some parameter of `model` is an FSDP2 shard (a DTensor)."""
    return isinstance(model, nn.Module) and any(isinstance(p, DTensor) for p in model.parameters())


@contextmanager
def gathered(*models: nn.Module | None) -> Iterator[None]:
    """Keep the FSDP2 units of `models` gathered (full parameters on every rank) inside the block.

    For sampling: a decoding loop runs each layer once per token, and without this each run
    all-gathers the layer's parameters and frees them again. Inside the block the parameters
    are gathered once, at the cost of holding every gathered model whole on each rank. A no-op
    for models that are not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for model in models if isinstance(model, nn.Module) for m in model.modules()
             if isinstance(m, FSDPModule)]
    units = list({id(m): m for m in units}.values())
    saved = []
    for m in units:
        for group in m._get_fsdp_state()._fsdp_param_groups:
            saved.append((group, group.post_forward_mesh_info))
            group.post_forward_mesh_info = None  # do not reshard after forward
        m.unshard()
    try:
        yield
    finally:
        for group, info in saved:
            group.post_forward_mesh_info = info
        for m in units:
            m.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank must call it), else `t`."""
    return t.full_tensor() if isinstance(t, DTensor) else t
