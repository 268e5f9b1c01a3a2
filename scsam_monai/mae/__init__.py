"""Self-supervised MAE pre-training on unlabelled EM: the model, its data, training step and handlers.

Run it with the bundle: ``python -m monai.bundle run pretraining --config_file bundle/configs/pretrain_mae.yaml``.
The exported encoder (``bundle/models/mae_encoder.pt``) is what ``FrozenMaeEncoder`` loads.
"""

from __future__ import annotations

from . import data, engine, handlers, model, resident
from .data import LoadSlice2Dd, unlabelled_slices
from .engine import PREDICT_NOTHING_KEY, MaeTrainStep, find_resume_checkpoint, warmup_cosine_schedule
from .handlers import EncoderExporter, EngineState, EpochSeed, LossHistory, ReconstructionWriter
from .model import MAE_DECODERS, MaskedAutoencoder, MaskedPatchLoss
from .resident import ResidentCropLoader, ResidentSlices, load_resident_slices, steps_per_epoch

__all__ = [
    "data",
    "engine",
    "handlers",
    "model",
    "resident",
    "MAE_DECODERS",
    "MaskedAutoencoder",
    "MaskedPatchLoss",
    "LoadSlice2Dd",
    "unlabelled_slices",
    "MaeTrainStep",
    "PREDICT_NOTHING_KEY",
    "find_resume_checkpoint",
    "warmup_cosine_schedule",
    "EncoderExporter",
    "EngineState",
    "EpochSeed",
    "LossHistory",
    "ReconstructionWriter",
    "ResidentSlices",
    "ResidentCropLoader",
    "load_resident_slices",
    "steps_per_epoch",
]
