"""Networks of scsam-monai: frozen encoders, FAFM fusion, class prompt encoder, ScSAM head and model."""

from __future__ import annotations

from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder
from scsam_monai.networks.fafm import FAFM, build_fusion
from scsam_monai.networks.prompt_encoder import ClassPromptEncoder
from scsam_monai.networks.scsam import ScSAM, ScSAMHead, count_trainable_parameters

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
