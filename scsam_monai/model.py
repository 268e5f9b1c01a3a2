"""The bundle's model: one builder composes the frozen encoders, the trained head and the image preprocessing.

:func:`build_scsam` is what ``network_def`` of both ``train.yaml`` and ``inference.yaml`` calls, in the manner of
segment-anything's ``build_sam``: it reads the SAM checkpoint once and hands it to the image encoder and to the
head's decoder parts, builds only the encoders the head's streams use, and attaches the
:class:`~scsam_monai.data.preprocessing.ImagePreprocessing` the images need. The result is :class:`ScSAMModel`,
the image-in network (what the Model Zoo's ``verify_net_in_out`` and MONAI Label load); training trains its
``head`` on cached embeddings.

The weights file ``models/model.pt`` has ONE layout, written by training and read by every consumer: the trained
head's state dict (``fusion.*``, ``prompt_encoder.*``, ``mask_decoder.*``, ``sam_prompt_encoder.*``) plus the
preprocessing record (:data:`~scsam_monai.data.preprocessing.PREPROCESSING_KEY`). The frozen SAM and MAE encoders
are never in it: they come from their own checkpoints (``large_files.yml``, the MAE pre-training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.networks.build import PAPER_HEAD, build_scsam_head
from scsam_monai.networks.checkpoints import SamCheckpoint
from scsam_monai.networks.encoders import SAM_ARCHITECTURES, FrozenMaeEncoder, FrozenSamEncoder
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

__all__ = ["ScSAMModel", "build_scsam", "build_export_head"]


class ScSAMModel(ScSAM):
    """The image-in ScSAM whose weights are only the trained head's: ``network_def`` of the bundle's configs.

    ``state_dict()`` is the head's (plus the preprocessing record) and ``load_state_dict`` loads the head, always
    strictly: ``models/model.pt`` as training writes it is exactly this network's state dict, and the frozen
    encoders keep the weights their own checkpoints gave them. Tracing (``ckpt_export --use_trace``) works for any
    image size; scripting does not (segment-anything's encoder is not scriptable).

    Args:
        sam_encoder: a ``FrozenSamEncoder`` (None for the MAE* variant).
        mae_encoder: a ``FrozenMaeEncoder`` (None for the SAM* variant).
        head: the head (``build_scsam_head``).
        preprocessing: how images are normalised before the network (recorded in the head's weights).
        head_settings: the keyword arguments the head was built with (:func:`build_export_head` builds its
            TorchScript twin from them).
    """

    def __init__(
        self,
        *,
        sam_encoder: nn.Module | None,
        mae_encoder: nn.Module | None,
        head: ScSAMHead,
        preprocessing: ImagePreprocessing | str = "per_image",
        head_settings: Mapping[str, Any] | None = None,
    ) -> None:
        head = ImagePreprocessing.of(preprocessing).attach(head)
        super().__init__(sam_encoder=sam_encoder, mae_encoder=mae_encoder, head=head)
        self.head_settings = dict(head_settings or {})

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """How images are normalised before this network: the head's record (saved with its weights)."""
        return self.head.image_preprocessing

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):  # type: ignore[override]
        """The head's state dict (the weights ``model.pt`` holds)."""
        return self.head.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load the head's weights strictly (``strict`` is ignored: a head that does not fit is an error)."""
        return self.head.load_state_dict(state_dict, strict=True, assign=assign)

    def forward(self, images: torch.Tensor, fit_to_canvas: bool = True) -> torch.Tensor:
        """Logits ``(B, 1 + C, H, W)`` for images ``(B, 1, H, W)`` normalised by :attr:`preprocessing`.

        ``fit_to_canvas`` as :meth:`ScSAM.forward` (False: tiles at the model's pixel size).
        """
        if torch.jit.is_tracing():
            # a cached positional encoding would enter the trace as a constant in one pass and not in another
            self.head._dense_pe_cache = None
        return super().forward(images, fit_to_canvas)


def build_scsam(
    *,
    class_names: Sequence[str],
    head: Mapping[str, Any] | None = None,
    image_normalization: ImagePreprocessing | str = "per_image",
    sam_arch: str = "vit_b",
    sam_checkpoint: str | Path | None = None,
    sam_allow_random_weights: bool = False,
    sam_precision: str = "auto",
    sam_attention: str = "fused",
    sam_compile: bool | str = "auto",
    mae_arch: str = "mae_vit_512",
    mae_checkpoint: str | Path | None = None,
    mae_allow_random_weights: bool = False,
    mae_options: Mapping[str, Any] | None = None,
    head_builder: Callable[..., ScSAMHead] = build_scsam_head,
) -> ScSAMModel:
    """Build the bundle's ScSAM from its plain settings; ``build_scsam(class_names=...)`` is the paper's model.

    Args:
        class_names: names of the label values 0..C (background first).
        head: the bundle's ``head`` switches (``networks.build.HEAD_KEYS``; default: the paper's).
        image_normalization: ``"per_image"`` or ``"prepared"`` (or an ``ImagePreprocessing``).
        sam_arch: SAM image encoder architecture (``vit_b``, ``vit_l``, ``vit_h``; ``tiny`` for tests).
        sam_checkpoint: SAM or SAM-compatible checkpoint, read once for the encoder and the decoder parts.
        sam_allow_random_weights: build SAM with random weights when there is no checkpoint.
        sam_precision: the SAM encoder's arithmetic (``FrozenSamEncoder``'s ``precision``).
        sam_attention: ``fused`` or ``reference``.
        sam_compile: ``auto``, True or False (``FrozenSamEncoder``'s ``compile``).
        mae_arch: MAE encoder architecture (the pre-training's).
        mae_checkpoint: the MAE encoder file the pre-training exported.
        mae_allow_random_weights: build the MAE with random weights when there is no checkpoint.
        mae_options: further ``FrozenMaeEncoder`` arguments (``tile_size``, ``subtract_blank``, ...); give the same
            in training and inference.
        head_builder: the head's builder (``build_scsam_head``, or a baseline's with its signature).

    Raises:
        ValueError: fewer than two class names, an unknown arch, normalisation or head switch.
    """
    if len(class_names) < 2:
        raise ValueError(f"class_names needs the background and at least one class, got {list(class_names)}.")
    if sam_arch not in SAM_ARCHITECTURES:
        raise ValueError(f"unknown SAM arch {sam_arch!r}, expected one of {sorted(SAM_ARCHITECTURES)}.")
    settings = {**PAPER_HEAD, **dict(head or {})}
    sam = SamCheckpoint.of(sam_checkpoint) if sam_checkpoint else None
    sam_encoder = None
    if settings["streams"] != "mae_only":
        sam_encoder = FrozenSamEncoder(
            arch=sam_arch,
            checkpoint=sam,
            allow_random_weights=sam_allow_random_weights,
            precision=sam_precision,
            attention=sam_attention,
            compile=sam_compile,
        )
    mae_encoder = None
    if settings["streams"] != "sam_only":
        mae_encoder = FrozenMaeEncoder(
            arch=mae_arch,
            checkpoint=mae_checkpoint,
            allow_random_weights=mae_allow_random_weights,
            **dict(mae_options or {}),
        )
    head_settings = {
        "settings": dict(head or {}),
        "num_classes": len(class_names) - 1,
        "canvas_size": int(SAM_ARCHITECTURES[sam_arch]["img_size"]),
    }
    trained = head_builder(**head_settings, sam_checkpoint=sam)
    return ScSAMModel(
        sam_encoder=sam_encoder,
        mae_encoder=mae_encoder,
        head=trained,
        preprocessing=image_normalization,
        head_settings=head_settings,
    )


def build_export_head(model: ScSAMModel) -> ScSAMHead:
    """The model's head as :class:`~scsam_monai.export.ConcatEmbeddingHead` (one input tensor, for TorchScript).

    Same settings, parameters, state-dict keys and preprocessing record as ``model.head``, so ``models/model.pt``
    loads into it as it is (``export_head_def`` of ``train.yaml``). Its SAM decoder parts start random: the
    trained weights come from ``model.pt``.
    """
    from scsam_monai.export import ConcatEmbeddingHead

    head = build_scsam_head(**model.head_settings, head_class=ConcatEmbeddingHead)
    return model.preprocessing.attach(head)
