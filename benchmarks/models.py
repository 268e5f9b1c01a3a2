"""The models the benchmark measures: the full ScSAM of a profile, with random weights unless checkpoints are given."""

from __future__ import annotations

import torch

from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder
from scsam_monai.networks.scsam import ScSAM

__all__ = ["build_model", "describe_weights"]


def build_model(
    sam_arch: str,
    mae_arch: str,
    *,
    sam_checkpoint: str | None = None,
    mae_checkpoint: str | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    sam_precision: str = "auto",
    sam_attention: str = "fused",
) -> ScSAM:
    """Full ScSAM (frozen encoders + an untrained head: timings do not depend on the head's weights), in eval mode.

    Args:
        sam_arch: SAM encoder architecture.
        mae_arch: MAE encoder architecture.
        sam_checkpoint: SAM checkpoint; None for random weights (the encoder logs a warning).
        mae_checkpoint: MAE checkpoint; None for random weights.
        device: where the model goes.
        seed: seed of the random weights.
        sam_precision: the SAM encoder's ``precision`` (auto, bf16, fp16, fp32).
        sam_attention: the SAM encoder's ``attention`` (fused, reference).
    """
    sam = FrozenSamEncoder(
        arch=sam_arch,
        checkpoint=sam_checkpoint,
        allow_random_weights=not sam_checkpoint,
        seed=seed,
        precision=sam_precision,
        attention=sam_attention,
    )
    mae = FrozenMaeEncoder(arch=mae_arch, checkpoint=mae_checkpoint, allow_random_weights=not mae_checkpoint, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = build_scsam_head(canvas_size=sam.img_size)
    return ScSAM(sam_encoder=sam, mae_encoder=mae, head=head).to(device).eval()


def describe_weights(model: ScSAM) -> dict:
    """Which weights the model's parts have: checkpoint cache keys, or ``random``; and whether any is random."""
    sam, mae = model.sam_encoder, model.mae_encoder
    weights = {
        "sam_encoder": sam.cache_key if sam.checkpoint else f"RANDOM ({sam.cache_key})",
        "mae_encoder": mae.cache_key if mae.checkpoint else f"RANDOM ({mae.cache_key})",
        "head": "RANDOM (untrained; timings do not depend on the head's weights)",
    }
    return {"random_weights": not (sam.checkpoint and mae.checkpoint), "weights": weights}
