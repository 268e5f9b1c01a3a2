"""Export helpers of the bundle: a traceable head for ``monai.bundle ckpt_export``.

MONAI's ``ckpt_export`` traces a network with ONE input tensor of ``input_shape``; :class:`ScSAMHead` takes two
(the SAM and the MAE embedding). :class:`ConcatEmbeddingHead` is the same head (a subclass: identical
parameters and state-dict keys, so ``models/model.pt`` loads as it is) whose ``forward`` takes the two embeddings
concatenated along channels.
"""

from __future__ import annotations

import torch

from .networks.scsam import ScSAMHead

__all__ = ["ConcatEmbeddingHead"]


class ConcatEmbeddingHead(ScSAMHead):
    """:class:`ScSAMHead` with one input: the SAM and MAE embeddings concatenated along channels.

    Takes the arguments of :class:`ScSAMHead`. The input has ``sam_channels + mae_channels`` channels for
    ``streams="both"`` (SAM first), ``sam_channels`` for ``"sam_only"`` and ``mae_channels`` for ``"mae_only"``.

    Example::

        >>> head = ConcatEmbeddingHead()
        >>> head(torch.randn(1, 256 + 512, 64, 64)).shape
        torch.Size([1, 3, 256, 256])
    """

    def __init__(self, *, sam_channels: int = 256, mae_channels: int = 512, **kwargs) -> None:
        super().__init__(sam_channels=sam_channels, mae_channels=mae_channels, **kwargs)
        self.sam_channels = sam_channels
        self.mae_channels = mae_channels

    @property
    def in_channels(self) -> int:
        """Channels of the concatenated input."""
        return {"both": self.sam_channels + self.mae_channels, "sam_only": self.sam_channels}.get(
            self.streams, self.mae_channels
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Logits ``(B, C, 4g, 4g)`` for concatenated embeddings ``(B, in_channels, g, g)``."""
        if embeddings.shape[1] != self.in_channels:
            raise ValueError(f"Expected {self.in_channels} embedding channels, got {embeddings.shape[1]}.")
        if torch.jit.is_tracing():
            # the cached positional encoding would enter one trace as a computation and the check trace as a
            # constant: recompute it inside every trace
            self._dense_pe_cache = None
        if self.streams == "both":
            sam, mae = embeddings[:, : self.sam_channels], embeddings[:, self.sam_channels :]
        elif self.streams == "sam_only":
            sam, mae = embeddings, None
        else:
            sam, mae = None, embeddings
        return super().forward(sam, mae)
