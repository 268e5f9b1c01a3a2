"""Feature fusion of the SAM and MAE streams: the paper's FAFM and the ablation alternatives.

Every fusion module maps (SAM embedding ``(B, C_sam, g, g)``, MAE embedding ``(B, C_mae, g, g)``) to a
:class:`FusionOutput` holding the fused features ``V_f`` of ``feature_dim`` (N) channels and the two
channel-aligned streams that the cosine alignment loss compares.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from timm.layers.cbam import ChannelAttn
from torch import nn

__all__ = [
    "FusionOutput",
    "ChannelAligner",
    "FAFM",
    "ConcatFusion",
    "CrossAttentionFusion",
    "SingleStream",
    "FUSION_MODES",
    "STREAM_MODES",
    "build_fusion",
]

FUSION_MODES = ("fafm", "concat", "cross_attention")
STREAM_MODES = ("both", "sam_only", "mae_only")


class FusionOutput(NamedTuple):
    """Result of a fusion module.

    Attributes:
        features: fused features V_f, ``(B, N, g, g)``.
        aligned_sam: SAM stream after channel alignment, ``(B, N, g, g)``, or None for a single MAE stream.
        aligned_mae: MAE stream after channel alignment, ``(B, N, g, g)``, or None for a single SAM stream.
    """

    features: torch.Tensor
    aligned_sam: torch.Tensor | None
    aligned_mae: torch.Tensor | None


class ChannelAligner(nn.Sequential):
    """Linear-ReLU-Linear MLP applied at every position, mapping ``in_channels`` to ``out_channels``.

    A 1x1 convolution is a position-wise Linear layer; using it avoids permuting (B, C, H, W) tensors.

    Args:
        in_channels: channels of the incoming embedding (256 for SAM, 512 for the MAE).
        out_channels: aligned width N.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )


def _conv_gn_relu(in_channels: int, out_channels: int, num_groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(min(num_groups, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class FAFM(nn.Module):
    """Feature Alignment and Fusion Module of ScSAM.

    Both streams are aligned to N channels by MLPs; the concatenation passes two 3x3 conv + GroupNorm
    blocks and CBAM-style channel attention (average and max pooling through a shared MLP, timm's
    ``ChannelAttn``) to give V_c with N/2 channels; an auxiliary stream applies a 3x3 conv and channel
    attention to the aligned SAM features (N/2); V_f is the concatenation of both (N).

    Args:
        sam_channels: channels of the SAM embedding.
        mae_channels: channels of the MAE embedding.
        feature_dim: N, the width of the fused features.
        num_groups: GroupNorm groups.
        attention_reduction: reduction ratio of the channel attention MLP.

    Example::

        >>> fafm = FAFM()
        >>> out = fafm(torch.randn(2, 256, 64, 64), torch.randn(2, 512, 64, 64))
        >>> out.features.shape
        torch.Size([2, 256, 64, 64])
    """

    def __init__(
        self,
        *,
        sam_channels: int = 256,
        mae_channels: int = 512,
        feature_dim: int = 256,
        num_groups: int = 32,
        attention_reduction: int = 16,
    ) -> None:
        super().__init__()
        if feature_dim % 2:
            raise ValueError(f"feature_dim must be even (it is split into two halves), got {feature_dim}.")
        half = feature_dim // 2
        self.align_sam = ChannelAligner(sam_channels, feature_dim)
        self.align_mae = ChannelAligner(mae_channels, feature_dim)
        self.fuse = nn.Sequential(
            _conv_gn_relu(2 * feature_dim, feature_dim, num_groups),
            _conv_gn_relu(feature_dim, half, num_groups),
            ChannelAttn(half, rd_ratio=1.0 / attention_reduction),
        )
        self.aux = nn.Sequential(
            _conv_gn_relu(feature_dim, half, num_groups),
            ChannelAttn(half, rd_ratio=1.0 / attention_reduction),
        )

    def forward(self, sam_embedding: torch.Tensor, mae_embedding: torch.Tensor) -> FusionOutput:
        """Fuse ``(B, C_sam, g, g)`` and ``(B, C_mae, g, g)`` into V_f ``(B, N, g, g)``."""
        a_sam = self.align_sam(sam_embedding)
        a_mae = self.align_mae(mae_embedding)
        v_c = self.fuse(torch.cat([a_sam, a_mae], dim=1))
        v_aux = self.aux(a_sam)
        return FusionOutput(torch.cat([v_c, v_aux], dim=1), a_sam, a_mae)


class ConcatFusion(nn.Module):
    """Ablation "fusion by concat": aligned streams concatenated and projected to N by a 1x1 conv.

    Args:
        sam_channels: channels of the SAM embedding.
        mae_channels: channels of the MAE embedding.
        feature_dim: N.
    """

    def __init__(self, *, sam_channels: int = 256, mae_channels: int = 512, feature_dim: int = 256) -> None:
        super().__init__()
        self.align_sam = ChannelAligner(sam_channels, feature_dim)
        self.align_mae = ChannelAligner(mae_channels, feature_dim)
        self.project = nn.Conv2d(2 * feature_dim, feature_dim, 1)

    def forward(self, sam_embedding: torch.Tensor, mae_embedding: torch.Tensor) -> FusionOutput:
        """Fuse ``(B, C_sam, g, g)`` and ``(B, C_mae, g, g)`` into ``(B, N, g, g)``."""
        a_sam = self.align_sam(sam_embedding)
        a_mae = self.align_mae(mae_embedding)
        return FusionOutput(self.project(torch.cat([a_sam, a_mae], dim=1)), a_sam, a_mae)


class CrossAttentionFusion(nn.Module):
    """Ablation "fusion by cross-attention": SAM positions query the MAE stream.

    Keys and values are the aligned MAE features average-pooled to ``kv_grid x kv_grid`` tokens, which keeps
    the attention matrix at ``g*g x kv_grid*kv_grid`` (4096 x 256 by default) instead of 4096 x 4096.

    Args:
        sam_channels: channels of the SAM embedding.
        mae_channels: channels of the MAE embedding.
        feature_dim: N.
        num_heads: attention heads.
        kv_grid: side of the pooled key/value token grid.
    """

    def __init__(
        self,
        *,
        sam_channels: int = 256,
        mae_channels: int = 512,
        feature_dim: int = 256,
        num_heads: int = 8,
        kv_grid: int = 16,
    ) -> None:
        super().__init__()
        self.align_sam = ChannelAligner(sam_channels, feature_dim)
        self.align_mae = ChannelAligner(mae_channels, feature_dim)
        self.pool = nn.AdaptiveAvgPool2d(kv_grid)
        self.attention = nn.MultiheadAttention(feature_dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(feature_dim)

    def forward(self, sam_embedding: torch.Tensor, mae_embedding: torch.Tensor) -> FusionOutput:
        """Fuse ``(B, C_sam, g, g)`` and ``(B, C_mae, g, g)`` into ``(B, N, g, g)``."""
        a_sam = self.align_sam(sam_embedding)
        a_mae = self.align_mae(mae_embedding)
        b, n, h, w = a_sam.shape
        query = a_sam.flatten(2).transpose(1, 2)
        kv = self.pool(a_mae).flatten(2).transpose(1, 2)
        attended, _ = self.attention(query, kv, kv, need_weights=False)
        fused = self.norm(query + attended).transpose(1, 2).reshape(b, n, h, w)
        return FusionOutput(fused, a_sam, a_mae)


class SingleStream(nn.Module):
    """Single-stream variants SAM* and MAE*: one embedding aligned to N channels, no fusion, no alignment loss.

    Args:
        in_channels: channels of the one embedding used.
        feature_dim: N.
        stream: "sam_only" or "mae_only": which input of ``forward`` is used.
    """

    def __init__(self, *, in_channels: int, feature_dim: int = 256, stream: str = "sam_only") -> None:
        super().__init__()
        if stream not in ("sam_only", "mae_only"):
            raise ValueError(f"stream must be 'sam_only' or 'mae_only', got {stream!r}.")
        self.stream = stream
        self.align = ChannelAligner(in_channels, feature_dim)

    def forward(self, sam_embedding: torch.Tensor | None, mae_embedding: torch.Tensor | None) -> FusionOutput:
        """Align the chosen stream ``(B, C, g, g)`` to ``(B, N, g, g)``; the other input is ignored."""
        if self.stream == "sam_only":
            if sam_embedding is None:
                raise ValueError("The SAM* variant needs a SAM embedding.")
            return FusionOutput(self.align(sam_embedding), None, None)
        if mae_embedding is None:
            raise ValueError("The MAE* variant needs an MAE embedding.")
        return FusionOutput(self.align(mae_embedding), None, None)


def build_fusion(
    fusion: str = "fafm",
    streams: str = "both",
    *,
    sam_channels: int = 256,
    mae_channels: int = 512,
    feature_dim: int = 256,
) -> nn.Module:
    """Build the fusion module for a ``fusion`` mode and a ``streams`` choice.

    Args:
        fusion: one of ``FUSION_MODES``; ignored when a single stream is used.
        streams: one of ``STREAM_MODES``.
        sam_channels: channels of the SAM embedding.
        mae_channels: channels of the MAE embedding.
        feature_dim: N.
    """
    if streams not in STREAM_MODES:
        raise ValueError(f"streams must be one of {STREAM_MODES}, got {streams!r}.")
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}.")
    if streams == "sam_only":
        return SingleStream(in_channels=sam_channels, feature_dim=feature_dim, stream="sam_only")
    if streams == "mae_only":
        return SingleStream(in_channels=mae_channels, feature_dim=feature_dim, stream="mae_only")
    kwargs = {"sam_channels": sam_channels, "mae_channels": mae_channels, "feature_dim": feature_dim}
    if fusion == "fafm":
        return FAFM(**kwargs)
    if fusion == "concat":
        return ConcatFusion(**kwargs)
    return CrossAttentionFusion(**kwargs)
