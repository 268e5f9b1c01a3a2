"""ScSAM: the trainable head on cached embeddings, and the full image-to-logits model.

``ScSAMHead`` = fusion (FAFM by default) + class prompt encoder + SAM's mask decoder (trainable) with SAM's
dense positional encoding and point embeddings (frozen, from SAM's prompt encoder). ``ScSAM`` puts the
frozen SAM and MAE encoders in front of it and returns logits at the input's size, a background channel first
(:func:`with_background`: its argmax is the label map). Both take built parts;
``networks/build.py`` builds the head from numbers and switches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder
from torch import nn

from scsam_monai.networks.fafm import FusionOutput
from scsam_monai.networks.geometry import unpad_and_resize
from scsam_monai.networks.prompt_encoder import ClassPromptEncoder, ClassPrompts

__all__ = ["ScSAMHead", "ScSAM", "count_trainable_parameters", "class_embeddings", "with_background"]


def with_background(class_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-class mask logits ``(B, C, H, W)`` -> ``(B, 1 + C, H, W)`` with a background channel 0 first.

    The head decodes one mask per class, each a logit of "this pixel is the class". A pixel is background when no
    class reaches the sigmoid probability ``threshold``: the background channel is that threshold's logit
    everywhere, so the argmax over the channels is the label map (0 background, 1..C classes), as MONAI's
    ``AsDiscrete(argmax=True)`` and MONAI Label read a network's output, with channel index = label value.

    Args:
        class_logits: the head's logits.
        threshold: sigmoid probability a class needs to win a pixel (0.5: background logit 0).
    """
    background = torch.full_like(class_logits[:, :1], float(torch.logit(torch.tensor(threshold))))
    return torch.cat([background, class_logits], dim=1)


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` that require gradients."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def class_embeddings(
    features: torch.Tensor, label: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean fused feature inside each class mask of each image, for the prototype contrastive loss.

    The label map is pooled to the feature grid as per-class area fractions, so a position half covered by a
    class counts half; classes absent from an image give no row.

    Args:
        features: fused features, ``(B, N, g, g)``.
        label: integer label map ``(B, 1, H, W)`` or ``(B, H, W)`` (0 background, 1..C classes), H and W
            multiples of g.
        num_classes: C.

    Returns:
        ``(embeddings (M, N), class_ids (M,))`` with class ids in 0..C-1 (label value minus one).
    """
    if label.ndim == 4:
        label = label[:, 0]
    b, n, g, _ = features.shape
    one_hot = F.one_hot(label.long().clamp(0, num_classes), num_classes + 1)[..., 1:]  # (B, H, W, C)
    weights = F.adaptive_avg_pool2d(one_hot.permute(0, 3, 1, 2).to(features.dtype), g)  # (B, C, g, g)
    area = weights.sum(dim=(2, 3))  # (B, C)
    sums = torch.einsum("bnhw,bchw->bcn", features, weights)
    present = area > 0
    embeddings = sums[present] / area[present].unsqueeze(-1)
    class_ids = torch.arange(num_classes, device=features.device).expand(b, -1)[present]
    return embeddings, class_ids


class ScSAMHead(nn.Module):
    """Trainable part of ScSAM: maps (SAM embedding, MAE embedding) to per-class mask logits.

    The constructor takes built parts; :func:`scsam_monai.networks.build.build_scsam_head` builds them from a few
    numbers and switches (its defaults are the paper's configuration) and loads SAM's decoder weights. All C
    classes of all B images go through the mask decoder in one batched call of B*C prompts.

    The frozen parts: SAM's prompt encoder (dense positional encoding, point and no-mask embeddings) and the
    decoder's outputs that ScSAM never uses (the three multimask hypernetwork MLPs and the IoU head: they stay in
    the state dict, so SAM checkpoints load as they are, but are not trained and DistributedDataParallel waits
    for no gradient of theirs).

    Args:
        fusion: the fusion module, ``(sam (B, C_sam, g, g), mae (B, C_mae, g, g))`` -> ``FusionOutput``.
        prompt_encoder: the class prompt encoder; its ``num_classes`` is C.
        mask_decoder: SAM's mask decoder (``build_mask_decoder``).
        sam_prompt_encoder: SAM's prompt encoder for an ``(g, g)`` embedding of a ``canvas_size`` canvas.
        streams: which embeddings the head takes: "both", "sam_only" (SAM*) or "mae_only" (MAE*).
        sam_channels: channels of the SAM embedding.
        mae_channels: channels of the MAE embedding.
        canvas_size: side of the square encoder input the grid covers (1024 for SAM, 256 for "tiny").
        channels_last: run the fusion on channels-last tensors (a speed switch, same results; meant for cuDNN
            with bf16/fp16).

    Example::

        >>> from scsam_monai.networks.build import build_scsam_head
        >>> head = build_scsam_head()  # the paper's configuration, 3 classes
        >>> head(torch.randn(1, 256, 64, 64), torch.randn(1, 512, 64, 64)).shape
        torch.Size([1, 3, 256, 256])
    """

    def __init__(
        self,
        *,
        fusion: nn.Module,
        prompt_encoder: ClassPromptEncoder,
        mask_decoder: nn.Module,
        sam_prompt_encoder: PromptEncoder,
        streams: str = "both",
        sam_channels: int = 256,
        mae_channels: int = 512,
        canvas_size: int = 1024,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = prompt_encoder.num_classes
        self.grid_size = prompt_encoder.grid_size
        if tuple(sam_prompt_encoder.image_embedding_size) != (self.grid_size, self.grid_size):
            raise ValueError(
                f"SAM's prompt encoder is built for a {tuple(sam_prompt_encoder.image_embedding_size)} grid, the class "
                f"prompt encoder for {self.grid_size} x {self.grid_size}."
            )
        self.canvas_size = canvas_size
        self.streams = streams
        self.sam_channels = sam_channels
        self.mae_channels = mae_channels
        self.fusion = fusion
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_prompt_encoder.requires_grad_(False)
        self.mask_decoder.iou_prediction_head.requires_grad_(False)
        for mlp in self.mask_decoder.output_hypernetworks_mlps[1:]:
            mlp.requires_grad_(False)
        self._dense_pe_cache: tuple | None = None
        self.channels_last = channels_last
        if channels_last:
            self.fusion.to(memory_format=torch.channels_last)

    def encode_features(self, sam_embedding: torch.Tensor | None, mae_embedding: torch.Tensor | None) -> FusionOutput:
        """Fuse the embeddings ``(B, 256, g, g)`` and ``(B, 512, g, g)`` into V_f ``(B, N, g, g)``."""
        if self.channels_last:
            sam_embedding, mae_embedding = (
                x.contiguous(memory_format=torch.channels_last) if x is not None else None
                for x in (sam_embedding, mae_embedding)
            )
        return self.fusion(sam_embedding, mae_embedding)

    def dense_pe(self, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """SAM's dense positional encoding ``(1, N, g, g)`` (channels-last memory), cached: it is a constant.

        The cache is rebuilt when the frozen Gaussian matrix changes (loading weights) or another device or dtype
        is asked for.
        """
        gaussian = self.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        key = (gaussian.data_ptr(), gaussian._version, gaussian.device, device, dtype)
        if self._dense_pe_cache is None or self._dense_pe_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable later for training too
                pe = self.sam_prompt_encoder.get_dense_pe().to(device=device, dtype=dtype)
            self._dense_pe_cache = (key, pe)
        return self._dense_pe_cache[1]

    def class_prompts(self, features: torch.Tensor) -> ClassPrompts:
        """The class prompt encoder's dense and sparse prompts (rows ``b*C + k``) for channels-last V_f.

        SAM's frozen point embeddings (positive, negative) and no-mask embedding are the ones it is given.
        """
        point = self.sam_prompt_encoder.point_embeddings
        return self.prompt_encoder(
            features,
            positive_embedding=point[1].weight[0],
            negative_embedding=point[0].weight[0],
            no_mask_embedding=self.sam_prompt_encoder.no_mask_embed.weight[0],
        )

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Prompt every class on every image and decode: V_f ``(B, N, g, g)`` -> logits ``(B, C, 4g, 4g)``."""
        b, n, h, w = features.shape
        c = self.num_classes
        # Channels-last V_f is the token layout (B, g*g, N) of the prompt encoder and SAM's transformer.
        features = features.contiguous(memory_format=torch.channels_last)
        prompts = self.class_prompts(features)
        # row b*C + k, like the prompts; one copy, in channels-last memory
        tokens = features.flatten(2).transpose(1, 2)  # (B, g*g, N)
        image_embeddings = tokens.unsqueeze(1).expand(b, c, h * w, n).reshape(b * c, h * w, n)
        image_embeddings = image_embeddings.transpose(1, 2).unflatten(2, (h, w))
        masks, _ = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.dense_pe(device=features.device, dtype=features.dtype),
            sparse_prompt_embeddings=prompts.sparse,
            dense_prompt_embeddings=prompts.dense,
            multimask_output=False,
        )
        return masks.reshape(b, c, *masks.shape[-2:])

    def forward(
        self,
        sam_embedding: torch.Tensor | None,
        mae_embedding: torch.Tensor | None = None,
        *,
        input_size: Sequence[int] | None = None,
        original_size: Sequence[int] | None = None,
        label: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """Per-class mask logits (and, given ``label``, what the ScSAM loss needs).

        Args:
            sam_embedding: ``(B, 256, g, g)`` (may be None for MAE*).
            mae_embedding: ``(B, 512, g, g)`` (may be None for SAM*).
            input_size: (h, w) of the resized image on the encoder canvas; with ``original_size`` the logits
                are cropped to it and resized to the original image size.
            original_size: (H, W) of the original image.
            label: training only: the label map on the logit grid; the call then returns
                ``forward_with_aux``'s ``(logits, aux)``. Training goes through ``forward`` rather than
                ``forward_with_aux`` because ``DistributedDataParallel`` synchronises gradients only for
                calls of the wrapped module's ``forward``.

        Returns:
            ``(B, C, 4g, 4g)`` logits on the padded canvas, or ``(B, C, H, W)`` when sizes are given; with
            ``label``, ``(logits, aux)`` on the canvas grid.
        """
        if label is not None:
            if original_size is not None:
                raise ValueError("label (training) and original_size (inference) cannot be combined.")
            return self.forward_with_aux(sam_embedding, mae_embedding, label)
        logits = self.decode(self.encode_features(sam_embedding, mae_embedding).features)
        if original_size is not None:
            if input_size is None:
                raise ValueError("original_size needs input_size (the resized size on the encoder canvas).")
            logits = unpad_and_resize(
                logits, tuple(int(v) for v in input_size), self.canvas_size, tuple(int(v) for v in original_size)
            )
        return logits

    def forward_with_aux(
        self, sam_embedding: torch.Tensor | None, mae_embedding: torch.Tensor | None, label: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """Logits on the canvas grid plus what the ScSAM loss needs.

        Args:
            sam_embedding: ``(B, 256, g, g)``.
            mae_embedding: ``(B, 512, g, g)``.
            label: integer label map on the logit grid, ``(B, 1, 4g, 4g)``.

        Returns:
            logits ``(B, C, 4g, 4g)`` and a dict with ``aligned_sam``, ``aligned_mae`` (``(B, N, g, g)`` or None),
            ``prototypes`` ``(C, N)``, ``class_embeddings`` ``(M, N)`` and ``class_ids`` ``(M,)``.
        """
        fused = self.encode_features(sam_embedding, mae_embedding)
        logits = self.decode(fused.features)
        embeddings, ids = class_embeddings(fused.features, label, self.num_classes)
        aux = {
            "aligned_sam": fused.aligned_sam,
            "aligned_mae": fused.aligned_mae,
            "prototypes": self.prompt_encoder.prototypes,
            "class_embeddings": embeddings,
            "class_ids": ids,
        }
        return logits, aux


class ScSAM(nn.Module):
    """Full ScSAM: frozen SAM and MAE encoders, then the trainable head; image in, logits at its size out.

    Args:
        sam_encoder: a ``FrozenSamEncoder`` (None for the MAE* variant).
        mae_encoder: a ``FrozenMaeEncoder`` (None for the SAM* variant).
        head: the ``ScSAMHead`` (its weights: ``networks.checkpoints.load_head_weights``).
    """

    def __init__(
        self,
        *,
        sam_encoder: nn.Module | None,
        mae_encoder: nn.Module | None,
        head: ScSAMHead,
    ) -> None:
        super().__init__()
        if sam_encoder is None and mae_encoder is None:
            raise ValueError("ScSAM needs at least one encoder.")
        self.sam_encoder = sam_encoder
        self.mae_encoder = mae_encoder
        self.head = head
        for encoder in (sam_encoder, mae_encoder):
            if encoder is not None and encoder.img_size != head.canvas_size:
                raise ValueError(
                    f"Encoder canvas {encoder.img_size} differs from the head's canvas_size {head.canvas_size}."
                )

    def embed(
        self, images: torch.Tensor, *, fit_to_canvas: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Frozen embeddings ``(B, 256, 64, 64)`` and ``(B, 512, 64, 64)`` of images ``(B, 1, H, W)`` in [0, 1]."""
        sam = self.sam_encoder(images, fit_to_canvas=fit_to_canvas) if self.sam_encoder is not None else None
        mae = self.mae_encoder(images, fit_to_canvas=fit_to_canvas) if self.mae_encoder is not None else None
        return sam, mae

    @property
    def canvas_size(self) -> int:
        """Side of the square canvas the encoders see (1024 for SAM ViT-B/L/H)."""
        return int(self.head.canvas_size)

    def forward(self, images: torch.Tensor, fit_to_canvas: bool = True) -> torch.Tensor:
        """Logits ``(B, 1 + C, H, W)`` for images ``(B, 1, H, W)`` normalised to [0, 1]: background, then C classes.

        Channel 0 is the background (:func:`with_background`); the argmax over channels is the label map.

        Args:
            images: ``(B, 1, H, W)`` in [0, 1].
            fit_to_canvas: resize each image so that its longest side is the canvas (any size; how the model is
                trained); False: images no larger than the canvas are segmented at their own pixel size, padded
                (the tiles of :mod:`scsam_monai.engines.tiling`).
        """
        if images.ndim != 4:
            raise ValueError(f"ScSAM expects images of shape (B, C, H, W), got {tuple(images.shape)}.")
        h, w = images.shape[-2:]
        encoder = self.sam_encoder if self.sam_encoder is not None else self.mae_encoder
        sam, mae = self.embed(images, fit_to_canvas=fit_to_canvas)
        placed = encoder.input_size(h, w) if fit_to_canvas else (h, w)
        return with_background(self.head(sam, mae, input_size=placed, original_size=(h, w)))
