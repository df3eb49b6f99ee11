"""Wall-clock timing of named phases (generation, forwards, the update) into a dict of seconds."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

__all__ = ["timed"]


@contextmanager
def timed(timings: dict, name: str):
    """Add the wall time of the block to timings[name] (syncing CUDA so the time is real)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
