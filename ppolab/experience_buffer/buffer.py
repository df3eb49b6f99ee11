"""Rollout storage and reproducible minibatch iteration for the PPO update.

A rollout produces named tensors that share the batch dim B (query and
response ids, mask, old logprobs, values, advantages, returns, ...). The
buffer concatenates successive ``add`` calls along dim 0, then serves
``epochs`` passes of shuffled minibatches, each split into micro-batches
for gradient accumulation.

Shapes beyond dim 0 must agree across adds; they are **not** padded:
right-padding would corrupt left-padded tensors such as query ids, so
pad responses to a fixed length (e.g. ``max_new_tokens``) before adding.

Typed batches: ``add(experience)`` with a dataclass such as ``ppolab.ppo.Experience`` (any object
with ``tensors() -> dict`` whose class takes those names as keyword arguments) stores its set
fields, and the micro-batches come back as that class (fields that were None stay None).
"""
import numbers
from collections.abc import Iterator

import torch


class ExperienceBuffer:
    """Named rollout tensors with a shared leading dim; see the module docstring."""

    def __init__(self):
        self._chunks: dict[str, list[torch.Tensor]] = {}
        self._size = 0
        self._kind = None  # the class of typed adds (micro-batches are built as it); None: dicts

    def add(self, batch=None, /, **tensors: torch.Tensor) -> None:
        """Append a batch: every tensor ``[B, ...]`` with the same B, by name or as one typed batch.

        The first add fixes the names (and the type); later adds must give the same names
        with the same trailing shape and dtype. Tensors are stored detached
        (rollout data is constant during the update).
        """
        if batch is not None:
            if tensors:
                raise ValueError("add() takes one typed batch or named tensors, not both")
            kind, tensors = type(batch), batch.tensors()
        else:
            kind = None
        if self._chunks and kind is not self._kind:
            held = self._kind.__name__ if self._kind else "named tensors"
            raise ValueError(f"add() got {kind.__name__ if kind else 'named tensors'}, buffer holds {held}")
        if not tensors:
            raise ValueError("add() needs at least one tensor")
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                shape = list(t.shape) if isinstance(t, torch.Tensor) else ""
                raise ValueError(f"{name} must be a tensor with a batch dim, got {type(t).__name__} {shape}")
        sizes = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"tensors in one add() must share the batch dim: {sizes}")
        if self._chunks:
            if set(tensors) != set(self._chunks):
                raise ValueError(f"add() got names {sorted(tensors)}, buffer holds {sorted(self._chunks)}")
            for name, t in tensors.items():
                first = self._chunks[name][0]
                if t.shape[1:] != first.shape[1:] or t.dtype != first.dtype:
                    raise ValueError(
                        f"{name}: got shape {list(t.shape)} {t.dtype}, buffer holds "
                        f"[*, {', '.join(map(str, first.shape[1:]))}] {first.dtype} (no padding is done)"
                    )
        for name, t in tensors.items():
            self._chunks.setdefault(name, []).append(t.detach())
        self._size += next(iter(sizes.values()))
        self._kind = kind

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        """Drop all stored tensors (start of the next rollout)."""
        self._chunks = {}
        self._size = 0
        self._kind = None

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """All stored data, ``name -> [len(self), ...]`` (concatenated on each access)."""
        return {name: torch.cat(chunks, dim=0) for name, chunks in self._chunks.items()}

    def minibatches(
        self, minibatch_size: int, epochs: int, seed: int, micro_batch_size: int | None = None
    ) -> Iterator[list]:
        """Yield, per optimizer step, a list of micro-batches: dicts, or the typed batch's class.

        Each epoch draws a fresh permutation from ``torch.Generator`` seeded
        with ``seed + epoch``, so a run is reproducible and every sample
        appears exactly once per epoch. A step's minibatch of
        ``minibatch_size`` samples is split into
        ``minibatch_size // micro_batch_size`` micro-batches (gradient
        accumulation); ``micro_batch_size`` defaults to ``minibatch_size``.
        Yields ``epochs * len(self) // minibatch_size`` steps. Arguments are
        checked at call time; the data is snapshotted then too.
        """
        micro = minibatch_size if micro_batch_size is None else micro_batch_size
        for name, value in [("minibatch_size", minibatch_size), ("epochs", epochs), ("micro_batch_size", micro)]:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self._size == 0:
            raise ValueError("the buffer is empty")
        if self._size % minibatch_size:
            raise ValueError(f"buffer size {self._size} is not divisible by minibatch_size={minibatch_size}")
        if minibatch_size % micro:
            raise ValueError(f"minibatch_size={minibatch_size} is not divisible by micro_batch_size={micro}")
        return self._iterate(self.tensors, self._kind or dict, self._size, int(minibatch_size), int(micro),
                             int(epochs), int(seed))

    @staticmethod
    def _iterate(data, kind, size, minibatch_size, micro, epochs, seed):
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(seed + epoch)
            order = torch.randperm(size, generator=generator)
            for start in range(0, size, minibatch_size):
                step = order[start : start + minibatch_size]
                yield [
                    kind(**{name: t[idx.to(t.device)] for name, t in data.items()})
                    for idx in step.split(micro)
                ]
