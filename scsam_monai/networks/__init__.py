"""Networks of scsam-monai: frozen encoders, FAFM fusion, class prompt encoder, ScSAM head and model."""

from __future__ import annotations

from .build import build_scsam_head
from .encoders import FrozenMaeEncoder, FrozenSamEncoder
from .fafm import FAFM, build_fusion
from .prompt_encoder import ClassPromptEncoder
from .scsam import ScSAM, ScSAMHead, count_trainable_parameters

__all__ = [
    "build_scsam_head",
    "FrozenSamEncoder",
    "FrozenMaeEncoder",
    "FAFM",
    "build_fusion",
    "ClassPromptEncoder",
    "ScSAMHead",
    "ScSAM",
    "count_trainable_parameters",
]
