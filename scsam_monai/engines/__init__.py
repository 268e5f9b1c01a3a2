"""Engine pieces of scsam-monai for MONAI's Ignite workflows: batches, the training step, handlers, inference."""

from __future__ import annotations

from scsam_monai.engines import batch, distributed, handlers, inference_inputs, resume, train_step, volume_inference
from scsam_monai.engines.batch import EmbeddingBatch
from scsam_monai.engines.train_step import ScSAMTrainStep

__all__ = [
    "batch",
    "distributed",
    "handlers",
    "inference_inputs",
    "resume",
    "train_step",
    "volume_inference",
    "EmbeddingBatch",
    "ScSAMTrainStep",
]
