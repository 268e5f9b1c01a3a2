"""SurgicalSAM-style head (Yue et al., AAAI 2024) on cached SAM embeddings, the main comparison's baseline.

SurgicalSAM feeds SAM's image embedding *as it is* to its prototype-based class prompt encoder and to SAM's mask
decoder; it has no second stream, no fusion and no channel aligner. ``ScSAMHead(streams="sam_only")`` (SAM*)
still passes the embedding through a trainable aligner MLP, so the two differ exactly there. The prompt encoder
(:class:`~scsam_monai.networks.prompt_encoder.ClassPromptEncoder`) and the loss (Dice + prototype NT-Xent; the
alignment term is zero without a second stream) are SurgicalSAM's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..networks.fafm import FusionOutput
from ..networks.scsam import ScSAMHead

__all__ = ["IdentitySamStream", "SurgicalSAMHead"]


class IdentitySamStream(nn.Module):
    """The SAM embedding unchanged as the features ``V_f`` (SurgicalSAM has no fusion); no parameters."""

    def forward(self, sam_embedding: torch.Tensor | None, mae_embedding: torch.Tensor | None = None) -> FusionOutput:
        """``(B, 256, g, g)`` -> the same tensor as ``FusionOutput.features``; the MAE input is ignored."""
        if sam_embedding is None:
            raise ValueError("The SurgicalSAM-style head needs a SAM embedding.")
        return FusionOutput(sam_embedding, None, None)


class SurgicalSAMHead(ScSAMHead):
    """``ScSAMHead`` on the SAM stream alone with the aligner removed: SurgicalSAM's prompt encoder and decoder.

    Takes ``ScSAMHead``'s keyword arguments; ``streams`` must be ``"sam_only"`` and ``sam_channels`` must equal
    ``feature_dim`` (SAM's 256), ``fusion`` is ignored.

    Example::

        >>> head = SurgicalSAMHead(canvas_size=256, streams="sam_only")
        >>> head(torch.randn(1, 256, 64, 64), None).shape
        torch.Size([1, 3, 256, 256])
    """

    def __init__(self, *, streams: str = "sam_only", **kwargs) -> None:
        if streams != "sam_only":
            raise ValueError(f"SurgicalSAMHead uses the SAM stream only (streams='sam_only'), got {streams!r}.")
        super().__init__(streams=streams, **kwargs)
        sam_channels = kwargs.get("sam_channels", 256)
        feature_dim = kwargs.get("feature_dim", 256)
        if sam_channels != feature_dim:
            raise ValueError(f"SurgicalSAMHead needs sam_channels == feature_dim, got {sam_channels} != {feature_dim}.")
        self.fusion = IdentitySamStream()
