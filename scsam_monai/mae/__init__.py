"""Self-supervised MAE pre-training on unlabelled EM: the model, its data, training step and handlers.

Run it with the bundle: ``python -m monai.bundle run pretraining --config_file bundle/configs/pretrain_mae.yaml``.
The exported encoder (``bundle/models/mae_encoder.pth``) is what ``FrozenMaeEncoder`` loads.
"""

from __future__ import annotations

from scsam_monai.mae import data, device_data, engine, handlers, model
from scsam_monai.mae.data import unlabelled_slices
from scsam_monai.mae.device_data import ResidentCropLoader, ResidentSlices, load_resident_slices, steps_per_epoch
from scsam_monai.mae.engine import PREDICT_NOTHING_KEY, MaeTrainStep, warmup_cosine_schedule
from scsam_monai.mae.handlers import EncoderExporter, EpochSeed, LossHistory, ReconstructionWriter
from scsam_monai.mae.model import MAE_DECODERS, MaskedAutoencoder, MaskedPatchLoss

__all__ = [
    "data",
    "engine",
    "handlers",
    "model",
    "device_data",
    "MAE_DECODERS",
    "MaskedAutoencoder",
    "MaskedPatchLoss",
    "unlabelled_slices",
    "MaeTrainStep",
    "PREDICT_NOTHING_KEY",
    "warmup_cosine_schedule",
    "EncoderExporter",
    "EpochSeed",
    "LossHistory",
    "ReconstructionWriter",
    "ResidentSlices",
    "ResidentCropLoader",
    "load_resident_slices",
    "steps_per_epoch",
]
