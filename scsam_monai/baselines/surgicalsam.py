"""SurgicalSAM (Yue et al., AAAI 2024) on cached SAM embeddings, the main comparison's prompt-encoder baseline.

SurgicalSAM feeds SAM's image embedding *as it is* to its prototype-based class prompt encoder and to SAM's mask
decoder: no second stream, no fusion, no channel aligner. Its prompt encoder (``surgicalSAM/model.py`` of
github.com/wenxi-yue/SurgicalSAM, ``Prototype_Prompt_Encoder`` and ``Learnable_Prototypes``) is rewritten here
from that design, not copied:

- one learnable prototype per class, an ``nn.Embedding`` weight (standard-normal initialisation);
- the similarity is the plain **dot product** of each position's feature with the prototype (no normalisation),
  and the class-activated feature is ``V + V * S`` (no MLP after it);
- the dense prompt is ``Conv1x1(N -> 128) -> ReLU -> Conv1x1(128 -> N)`` of the prompted class's activated
  features;
- the sparse prompt reduces the g*g positions of every class's activated features to T tokens
  (``Conv1d(g*g -> 128) -> ReLU -> Conv1d(128 -> T)``) and holds the tokens of all classes, a positive embedding
  added to the prompted class's and a negative one to the others'. SurgicalSAM's ``pn_cls_embeddings`` are T
  copies of SAM's positive / negative point embeddings, loaded from the SAM checkpoint, frozen
  (``requires_grad=False`` in ``train.py``) and detached in ``forward``; adding SAM's frozen point embeddings
  themselves is therefore the same computation, and that is what :class:`PrototypePromptEncoder` does.

What differs from the original, on purpose, and is the same for every row of our tables: SAM's image encoder is
the configured one (the original uses ViT-H); every class is prompted on every image, in training and at test
time (the original trains and evaluates only on the classes present in the ground truth, which a test must not
know); the loss is the bundle's Dice + prototype NT-Xent (``ScSAMLoss``; its alignment term is zero with one
stream), where the original uses a squared-denominator Dice on present classes only; augmentation and schedule are
the shared ones of the experiments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder
from torch import nn

from scsam_monai.networks.build import HEAD_KEYS, build_sam_decoder_parts
from scsam_monai.networks.checkpoints import SamCheckpoint
from scsam_monai.networks.fafm import FusionOutput
from scsam_monai.networks.prompt_encoder import ClassPrompts
from scsam_monai.networks.scsam import ScSAMHead

__all__ = ["IdentitySamStream", "PrototypePromptEncoder", "SurgicalSAMHead", "build_surgicalsam_head"]


class IdentitySamStream(nn.Module):
    """The SAM embedding unchanged as the features ``V_f`` (SurgicalSAM has no fusion); no parameters."""

    def forward(self, sam_embedding: torch.Tensor | None, mae_embedding: torch.Tensor | None = None) -> FusionOutput:
        """``(B, 256, g, g)`` -> the same tensor as ``FusionOutput.features``; the MAE input is ignored."""
        if sam_embedding is None:
            raise ValueError("The SurgicalSAM head needs a SAM embedding.")
        return FusionOutput(sam_embedding, None, None)


class PrototypePromptEncoder(nn.Module):
    """SurgicalSAM's prototype-based class prompt encoder, with its learnable class prototypes.

    Same call and output as :class:`~scsam_monai.networks.prompt_encoder.ClassPromptEncoder`, so that
    ``ScSAMHead`` drives either.

    Args:
        num_classes: C, foreground classes.
        feature_dim: N, width of the SAM embedding and of SAM's prompt embeddings.
        grid_size: g, side of the embedding grid (64 for SAM).
        num_tokens: T, sparse tokens per class (SurgicalSAM: 2 on EndoVis2018, 4 on EndoVis2017).
        dense_hidden: hidden width of the dense prompt's 1x1 convolutions (128 in SurgicalSAM).
        sparse_hidden: hidden width of the sparse reduction over positions (128 in SurgicalSAM).

    Example::

        >>> encoder = PrototypePromptEncoder(num_classes=3, grid_size=16)
        >>> point = torch.zeros(256)
        >>> prompts = encoder(torch.randn(2, 256, 16, 16), positive_embedding=point, negative_embedding=point,
        ...                   no_mask_embedding=point)
        >>> prompts.dense.shape, prompts.sparse.shape
        (torch.Size([6, 256, 16, 16]), torch.Size([6, 12, 256]))
    """

    def __init__(
        self,
        *,
        num_classes: int = 3,
        feature_dim: int = 256,
        grid_size: int = 64,
        num_tokens: int = 4,
        dense_hidden: int = 128,
        sparse_hidden: int = 128,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.grid_size = grid_size
        self.num_tokens = num_tokens
        # Learnable_Prototypes: an nn.Embedding's weight, drawn from N(0, 1)
        self.prototypes = nn.Parameter(torch.randn(num_classes, feature_dim))
        self.dense_fc_1 = nn.Conv2d(feature_dim, dense_hidden, 1)
        self.dense_fc_2 = nn.Conv2d(dense_hidden, feature_dim, 1)
        # Conv1d whose channels are the g*g positions: a learned weighted sum of the positions per token
        self.sparse_fc_1 = nn.Conv1d(grid_size * grid_size, sparse_hidden, 1)
        self.sparse_fc_2 = nn.Conv1d(sparse_hidden, num_tokens, 1)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Dot product ``(B, C, g, g)`` of features ``(B, N, g, g)`` with every prototype (no normalisation)."""
        return torch.einsum("bnhw,cn->bchw", features, self.prototypes)

    def activate(self, features: torch.Tensor) -> torch.Tensor:
        """Class-activated features ``V + V * S_k`` for every class, ``(B, C, g*g, N)`` (SurgicalSAM's layout)."""
        tokens = features.flatten(2).transpose(1, 2)  # (B, g*g, N)
        scale = 1.0 + self.similarity(features).flatten(2).unsqueeze(-1)  # (B, C, g*g, 1)
        return tokens.unsqueeze(1) * scale

    def forward(
        self,
        features: torch.Tensor,
        *,
        positive_embedding: torch.Tensor,
        negative_embedding: torch.Tensor,
        no_mask_embedding: torch.Tensor | None = None,
    ) -> ClassPrompts:
        """Dense and sparse prompts for every class on every image (rows ``b * C + k``).

        Args:
            features: SAM embedding, ``(B, N, g, g)``.
            positive_embedding: SAM's (frozen) positive point embedding, ``(N,)``; used detached.
            negative_embedding: SAM's (frozen) negative point embedding, ``(N,)``; used detached.
            no_mask_embedding: unused (SurgicalSAM always builds a dense prompt); accepted for the common call.

        Returns:
            ``ClassPrompts`` with dense ``(B*C, N, g, g)``, sparse ``(B*C, C*T, N)`` and the dot-product
            similarity ``(B, C, g, g)``.
        """
        b, n, h, w = features.shape
        if h != self.grid_size or w != self.grid_size:
            raise ValueError(f"Expected a {self.grid_size}x{self.grid_size} feature grid, got {h}x{w}.")
        c, t = self.num_classes, self.num_tokens
        activated = self.activate(features)  # (B, C, g*g, N)
        dense = activated.reshape(b * c, h, w, n).permute(0, 3, 1, 2)  # (B*C, N, g, g)
        dense = self.dense_fc_2(F.relu(self.dense_fc_1(dense)))
        class_tokens = self.sparse_fc_2(F.relu(self.sparse_fc_1(activated.reshape(b * c, h * w, n))))
        class_tokens = class_tokens.reshape(b, c, t, n)  # tokens of class j, for each image
        is_prompted = torch.eye(c, device=features.device, dtype=class_tokens.dtype)  # (prompted k, class j)
        positive, negative = positive_embedding.detach(), negative_embedding.detach()
        offsets = is_prompted[:, :, None, None] * positive + (1 - is_prompted)[:, :, None, None] * negative
        sparse = class_tokens.unsqueeze(1) + offsets.unsqueeze(0)  # (B, C_k, C_j, T, N)
        return ClassPrompts(dense, sparse.reshape(b * c, c * t, n), self.similarity(features))


class SurgicalSAMHead(ScSAMHead):
    """SurgicalSAM on the SAM stream: its prototype prompt encoder and SAM's mask decoder on the raw embedding.

    ``ScSAMHead`` with SurgicalSAM's fixed choices: the SAM stream only and no fusion (:class:`IdentitySamStream`);
    :func:`build_surgicalsam_head` builds the parts.

    Args:
        prompt_encoder: a :class:`PrototypePromptEncoder`.
        mask_decoder: SAM's mask decoder (``build_mask_decoder``).
        sam_prompt_encoder: SAM's prompt encoder (frozen: dense positional encoding and point embeddings).
        canvas_size: side of the square encoder input the grid covers.
    """

    def __init__(
        self,
        *,
        prompt_encoder: PrototypePromptEncoder,
        mask_decoder: nn.Module,
        sam_prompt_encoder: PromptEncoder,
        canvas_size: int = 1024,
    ) -> None:
        if not isinstance(prompt_encoder, PrototypePromptEncoder):
            raise TypeError(f"SurgicalSAMHead needs a PrototypePromptEncoder, got {type(prompt_encoder).__name__}.")
        super().__init__(
            fusion=IdentitySamStream(),
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            sam_prompt_encoder=sam_prompt_encoder,
            streams="sam_only",
            sam_channels=prompt_encoder.feature_dim,
            canvas_size=canvas_size,
        )


def build_surgicalsam_head(
    settings: Mapping[str, Any] | None = None,
    *,
    num_classes: int = 3,
    canvas_size: int = 1024,
    grid_size: int = 64,
    feature_dim: int = 256,
    sam_checkpoint: str | Path | SamCheckpoint | None = None,
    compile: bool = False,
    **switches: Any,
) -> SurgicalSAMHead:
    """Build the SurgicalSAM head; called like ``build_scsam_head``, so ``build_scsam(head_builder=...)`` takes both.

    Args:
        settings: the bundle's ``head`` section. SurgicalSAM has none of ScSAM's switches: ``streams`` must be
            ``"sam_only"``, ``residual`` true and ``prompts`` ``"dense+sparse"``; ``fusion`` is ignored (there is
            no fusion); ``num_sparse_tokens`` is SurgicalSAM's ``num_tokens``.
        num_classes: C, foreground classes.
        canvas_size: side of the square encoder input the grid covers (1024 for SAM, 256 for "tiny").
        grid_size: g, side of the embedding grid; logits come out at 4g x 4g.
        feature_dim: N, SAM's embedding width (256).
        sam_checkpoint: SAM checkpoint whose ``mask_decoder`` and ``prompt_encoder`` weights initialise the decoder
            and the frozen point embeddings (SurgicalSAM's ``pn_cls_embeddings``); None keeps random ones.
        compile: ``torch.compile`` the prompt encoder and the mask decoder in place.
        switches: the same switches as keyword arguments (``build_scsam_head``'s ``fusion``, ``streams``, ...).

    Raises:
        ValueError: an unknown switch, or a switch SurgicalSAM does not have.
    """
    merged = {"streams": "sam_only", "residual": True, "prompts": "dense+sparse", "num_sparse_tokens": 4}
    for key, value in {**(settings or {}), **switches}.items():
        if key not in HEAD_KEYS:
            raise ValueError(f"SurgicalSAM head: unknown switch {key!r}; the switches are {', '.join(HEAD_KEYS)}.")
        merged[key] = value
    if merged["streams"] != "sam_only" or not merged["residual"] or merged["prompts"] != "dense+sparse":
        raise ValueError(
            "SurgicalSAM head: SurgicalSAM uses the SAM stream (streams='sam_only'), the V + V * S activation "
            "(residual=True) and dense + sparse prompts (prompts='dense+sparse'); got "
            f"streams={merged['streams']!r}, residual={merged['residual']!r}, prompts={merged['prompts']!r}."
        )
    prompt_encoder = PrototypePromptEncoder(
        num_classes=num_classes,
        feature_dim=feature_dim,
        grid_size=grid_size,
        num_tokens=int(merged["num_sparse_tokens"]),
    )
    mask_decoder, sam_prompt_encoder = build_sam_decoder_parts(
        canvas_size=canvas_size, grid_size=grid_size, feature_dim=feature_dim, sam_checkpoint=sam_checkpoint
    )
    head = SurgicalSAMHead(
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        sam_prompt_encoder=sam_prompt_encoder,
        canvas_size=canvas_size,
    )
    if compile:
        for module in (head.prompt_encoder, head.mask_decoder):
            module.compile()
    return head
