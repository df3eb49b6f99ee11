"""Rollout storage with reproducible shuffled minibatches and micro-batches."""
from .buffer import ExperienceBuffer

__all__ = ["ExperienceBuffer"]
