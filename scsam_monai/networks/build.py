"""Builder of the ScSAM head, in the manner of segment-anything's ``build_sam.py``.

:func:`build_scsam_head` assembles :class:`~scsam_monai.networks.scsam.ScSAMHead` from a few numbers and the
bundle's ``head`` switches (:data:`HEAD_KEYS`): it builds the fusion, the class prompt encoder, SAM's mask decoder
and SAM's prompt encoder, initialises the last two from a SAM checkpoint when one is given, and optionally
compiles. The parts never know which variant they are in, and no module constructor reads a file. Its defaults
are the paper's configuration (:data:`PAPER_HEAD`, 3 classes, SAM's 1024 canvas and 64 x 64 grid).

In the bundle, :func:`scsam_monai.model.build_scsam` (``network_def`` of ``train.yaml`` and ``inference.yaml``)
calls it with the ``head`` section, the class count and the SAM checkpoint it read once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segment_anything.modeling import PromptEncoder
from torch import nn

from scsam_monai.networks.checkpoints import SamCheckpoint, load_sam_decoder_weights
from scsam_monai.networks.fafm import build_fusion
from scsam_monai.networks.mask_decoder import build_mask_decoder
from scsam_monai.networks.prompt_encoder import ClassPromptEncoder
from scsam_monai.networks.scsam import ScSAMHead

__all__ = ["HEAD_KEYS", "PAPER_HEAD", "build_scsam_head", "build_sam_decoder_parts"]

logger = logging.getLogger(__name__)

PAPER_HEAD: dict[str, Any] = {
    "fusion": "fafm",
    "streams": "both",
    "residual": True,
    "prompts": "dense+sparse",
    "num_sparse_tokens": 4,
}
"""The paper's head switches: FAFM, both streams, residual class activation, dense + sparse prompts, 4 tokens."""

HEAD_KEYS = tuple(PAPER_HEAD)
"""Keys of the bundle's ``head`` section (the switches of :func:`build_scsam_head`)."""


def build_scsam_head(
    settings: Mapping[str, Any] | None = None,
    *,
    num_classes: int = 3,
    canvas_size: int = 1024,
    grid_size: int = 64,
    sam_channels: int = 256,
    mae_channels: int = 512,
    feature_dim: int = 256,
    fusion: str = PAPER_HEAD["fusion"],
    streams: str = PAPER_HEAD["streams"],
    residual: bool = PAPER_HEAD["residual"],
    prompts: str = PAPER_HEAD["prompts"],
    num_sparse_tokens: int = PAPER_HEAD["num_sparse_tokens"],
    sam_checkpoint: str | Path | SamCheckpoint | None = None,
    channels_last: bool = False,
    compile: bool = False,
    head_class: type[ScSAMHead] = ScSAMHead,
) -> ScSAMHead:
    """Build an ScSAM head; ``build_scsam_head()`` is the paper's configuration for 3 classes.

    Args:
        settings: the bundle's ``head`` section, one mapping of switches (keys of :data:`HEAD_KEYS`); each entry
            takes the place of the keyword argument of the same name, which must then be left at its default.
        num_classes: C, foreground classes (nucleus, mitochondria, granules by default).
        canvas_size: side of the square encoder input the grid covers (1024 for SAM, 256 for "tiny").
        grid_size: g, side of the embedding grid; logits come out at 4g x 4g.
        sam_channels: channels of the SAM embedding.
        mae_channels: channels of the MAE embedding.
        feature_dim: N, width of the fused features; must be 256 to load SAM's decoder weights.
        fusion: "fafm", "concat" or "cross_attention".
        streams: "both", "sam_only" (SAM*) or "mae_only" (MAE*).
        residual: keep the ``+ V_f`` residual of the class activation.
        prompts: "dense+sparse", "dense" or "sparse".
        num_sparse_tokens: sparse tokens per class.
        sam_checkpoint: SAM (or SAM-compatible) checkpoint (a file, or a ``SamCheckpoint`` read already) whose
            ``mask_decoder`` and ``prompt_encoder`` weights initialise the decoder and the frozen positional /
            point embeddings; None keeps random ones.
        channels_last: run the fusion convolutions on channels-last tensors (a speed switch, same results).
        compile: ``torch.compile`` the fusion, the prompt encoder and the mask decoder in place (state-dict keys
            unchanged); the first call of each input shape compiles (tens of seconds).
        head_class: :class:`ScSAMHead` or a subclass with its constructor (e.g. the export's
            ``ConcatEmbeddingHead``: same parameters and state-dict keys).

    Raises:
        ValueError: an unknown key in ``settings``, a switch given both ways, or an invalid switch value.
    """
    switches = {
        "fusion": fusion,
        "streams": streams,
        "residual": residual,
        "prompts": prompts,
        "num_sparse_tokens": num_sparse_tokens,
    }
    for key, value in (settings or {}).items():
        if key not in PAPER_HEAD:
            raise ValueError(f"head settings: unknown key {key!r}; the head's settings are {', '.join(HEAD_KEYS)}.")
        if switches[key] != PAPER_HEAD[key]:
            raise ValueError(f"head settings: {key!r} is given both in settings and as an argument; give it once.")
        switches[key] = value
    fusion_module = build_fusion(
        switches["fusion"],
        switches["streams"],
        sam_channels=sam_channels,
        mae_channels=mae_channels,
        feature_dim=feature_dim,
    )
    prompt_encoder = ClassPromptEncoder(
        num_classes=num_classes,
        feature_dim=feature_dim,
        grid_size=grid_size,
        num_tokens=switches["num_sparse_tokens"],
        residual=switches["residual"],
        prompts=switches["prompts"],
    )
    mask_decoder, sam_prompt_encoder = build_sam_decoder_parts(
        canvas_size=canvas_size, grid_size=grid_size, feature_dim=feature_dim, sam_checkpoint=sam_checkpoint
    )
    head = head_class(
        fusion=fusion_module,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        sam_prompt_encoder=sam_prompt_encoder,
        streams=switches["streams"],
        sam_channels=sam_channels,
        mae_channels=mae_channels,
        canvas_size=canvas_size,
        channels_last=channels_last,
    )
    if compile:
        for module in (head.fusion, head.prompt_encoder, head.mask_decoder):
            module.compile()
    return head


def build_sam_decoder_parts(
    *,
    canvas_size: int = 1024,
    grid_size: int = 64,
    feature_dim: int = 256,
    sam_checkpoint: str | Path | SamCheckpoint | None = None,
) -> tuple[nn.Module, PromptEncoder]:
    """SAM's mask decoder and SAM's prompt encoder for a head, initialised from a SAM checkpoint if one is given.

    SAM's prompt encoder supplies the dense positional encoding and the point / no-mask embeddings (the head keeps
    it frozen, as SurgicalSAM does). Every head variant (ScSAM's, the SurgicalSAM baseline's) builds them here.

    Args:
        canvas_size: side of the square encoder input the grid covers.
        grid_size: g, side of the embedding grid.
        feature_dim: N, the decoder's width; 256 to load SAM's weights.
        sam_checkpoint: SAM (or SAM-compatible) checkpoint with ``mask_decoder.*`` and ``prompt_encoder.*``
            weights; None keeps random ones.

    Returns:
        ``(mask_decoder, sam_prompt_encoder)``.
    """
    mask_decoder = build_mask_decoder(transformer_dim=feature_dim)
    sam_prompt_encoder = PromptEncoder(
        embed_dim=feature_dim,
        image_embedding_size=(grid_size, grid_size),
        input_image_size=(canvas_size, canvas_size),
        mask_in_chans=16,
    )
    if sam_checkpoint:
        load_sam_decoder_weights(sam_checkpoint, mask_decoder=mask_decoder, prompt_encoder=sam_prompt_encoder)
        source = sam_checkpoint.path if isinstance(sam_checkpoint, SamCheckpoint) else sam_checkpoint
        logger.info("Mask decoder and prompt embeddings initialised from %s", source)
    return mask_decoder, sam_prompt_encoder
