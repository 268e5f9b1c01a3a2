"""Engine pieces of scsam-monai for MONAI's Ignite workflows: batches, the training step, handlers, inference."""

from __future__ import annotations

from . import batch, distributed, handlers, inference, resume, train_step, volume_inference
from .batch import EmbeddingBatch
from .train_step import ScSAMTrainStep

__all__ = [
    "batch",
    "distributed",
    "handlers",
    "inference",
    "resume",
    "train_step",
    "volume_inference",
    "EmbeddingBatch",
    "ScSAMTrainStep",
]
