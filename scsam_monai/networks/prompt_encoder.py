"""Class prompt encoder: learnable class prototypes turned into SAM prompt embeddings.

Follows the prototype-based prompt encoder of SurgicalSAM (Yue et al., AAAI 2024) as ScSAM describes it:
the fused features are compared with one learnable prototype per class, the similarity map activates the
features for that class, and the class-activated features become a dense prompt (1x1 convs) and a few
sparse prompt tokens (a learned reduction over all positions). Nothing in segment-anything or MONAI builds
prompts from class prototypes, so this module is ours.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROMPT_MODES", "ClassPrompts", "ClassPromptEncoder"]

PROMPT_MODES = ("dense+sparse", "dense", "sparse")


class ClassPrompts(NamedTuple):
    """Prompt embeddings for every (image, class) pair, flattened image-major: row ``b * C + k``.

    Attributes:
        dense: dense prompt embeddings, ``(B*C, N, g, g)``.
        sparse: sparse prompt tokens, ``(B*C, C*T, N)`` (``(B*C, 0, N)`` when sparse prompts are off).
        similarity: cosine similarity of features and prototypes, ``(B, C, g, g)``.
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    similarity: torch.Tensor


class ClassPromptEncoder(nn.Module):
    """Prototype bank and prompt generator.

    For each class k: ``S_k = cos(V_f, p_k)`` at every position (both L2-normalised);
    ``V_a = V_f * S_k + V_f`` (the ``+ V_f`` residual can be switched off for the ablation);
    ``V_a = V_a + MLP(V_a)`` (residual position-wise MLP). The dense prompt is
    ``Conv1x1(N -> N/2) -> ReLU -> Conv1x1(N/2 -> N)`` of V_a. The sparse prompt: ``num_tokens`` tokens per
    class from a learned reduction over the g*g positions of V_a; the prompt for class k holds the tokens of
    all classes, SAM's positive point embedding added to class k's tokens and the negative one to the
    others' (SurgicalSAM's rule). With sparse prompts off, there are no sparse tokens; with dense prompts
    off, the dense prompt is SAM's ``no_mask_embed`` as SAM uses when no mask is given.

    Args:
        num_classes: C, foreground classes.
        feature_dim: N, width of the fused features and of SAM's prompt embeddings.
        grid_size: g, side of the embedding grid (64 for SAM).
        num_tokens: T, sparse tokens per class.
        sparse_hidden: hidden width of the sparse reduction.
        residual: whether the class activation keeps the ``+ V_f`` residual.
        prompts: one of ``PROMPT_MODES``.
    """

    def __init__(
        self,
        *,
        num_classes: int = 3,
        feature_dim: int = 256,
        grid_size: int = 64,
        num_tokens: int = 4,
        sparse_hidden: int = 128,
        residual: bool = True,
        prompts: str = "dense+sparse",
    ) -> None:
        super().__init__()
        if prompts not in PROMPT_MODES:
            raise ValueError(f"prompts must be one of {PROMPT_MODES}, got {prompts!r}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.grid_size = grid_size
        self.num_tokens = num_tokens
        self.residual = residual
        self.prompts = prompts
        self.prototypes = nn.Parameter(torch.randn(num_classes, feature_dim) * 0.1)
        self.activation_mlp = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, feature_dim)
        )
        self.dense_head = (
            nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim // 2, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(feature_dim // 2, feature_dim, 1),
            )
            if "dense" in prompts
            else None
        )
        # Conv1d over the position axis: a learned weighted sum of the g*g positions per token.
        self.sparse_head = (
            nn.Sequential(
                nn.Conv1d(grid_size * grid_size, sparse_hidden, 1),
                nn.ReLU(inplace=True),
                nn.Conv1d(sparse_hidden, num_tokens, 1),
            )
            if "sparse" in prompts
            else None
        )

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, C, g, g)`` of features ``(B, N, g, g)`` with every prototype."""
        return torch.einsum("bnhw,cn->bchw", F.normalize(features, dim=1), F.normalize(self.prototypes, dim=1))

    def forward(
        self,
        features: torch.Tensor,
        *,
        positive_embedding: torch.Tensor,
        negative_embedding: torch.Tensor,
        no_mask_embedding: torch.Tensor,
    ) -> ClassPrompts:
        """Build prompts for every class on every image.

        Args:
            features: fused features V_f, ``(B, N, g, g)``.
            positive_embedding: SAM's positive point embedding, ``(N,)``.
            negative_embedding: SAM's negative point embedding, ``(N,)``.
            no_mask_embedding: SAM's no-mask dense embedding, ``(N,)``.
        """
        b, n, h, w = features.shape
        if h != self.grid_size or w != self.grid_size:
            raise ValueError(f"Expected a {self.grid_size}x{self.grid_size} feature grid, got {h}x{w}.")
        c = self.num_classes
        sim = self.similarity(features)  # (B, C, g, g)
        # Work in the token layout (B, C, g*g, N) throughout: a view of channels-last features, and the layout the
        # Linear layers and SAM's transformer use, so no transposed copies are made.
        flat = features.flatten(2).transpose(1, 2)  # (B, g*g, N)
        scale = sim.flatten(2).unsqueeze(-1)  # (B, C, g*g, 1)
        if self.residual:
            scale = scale + 1.0  # V_f * S_k + V_f = V_f * (S_k + 1)
        first, _, second = self.activation_mlp
        # The activation is a per-position scalar, so the MLP's first Linear commutes with it:
        # W1 (s * v) + b1 = s * (W1 v) + b1, computed once per image instead of once per class.
        hidden = torch.addcmul(first.bias, scale, F.linear(flat, first.weight).unsqueeze(1)).relu_()
        # tokens = V_a + MLP(V_a) = (s * v + b2) + hidden @ W2^T, with the add fused into the matmul
        residual = torch.addcmul(second.bias, flat.unsqueeze(1), scale).reshape(b * c * h * w, n)
        tokens = torch.addmm(residual, hidden.reshape(b * c * h * w, n), second.weight.t()).reshape(b * c, h * w, n)

        if self.dense_head is not None:
            conv1, _, conv2 = self.dense_head
            grid = F.linear(tokens, conv1.weight.flatten(1), conv1.bias).relu_()
            grid = F.linear(grid, conv2.weight.flatten(1), conv2.bias)  # (B*C, g*g, N)
            dense = grid.transpose(1, 2).unflatten(2, (h, w))  # (B*C, N, g, g), channels-last memory
        else:
            dense = no_mask_embedding.reshape(1, n, 1, 1).expand(b * c, n, h, w)

        if self.sparse_head is not None:
            class_tokens = self.sparse_head(tokens).reshape(b, c, self.num_tokens, n)
            is_prompted = torch.eye(c, device=features.device, dtype=class_tokens.dtype)  # (prompted k, class j)
            offsets = (
                is_prompted[:, :, None, None] * positive_embedding
                + (1 - is_prompted)[:, :, None, None] * negative_embedding
            )  # (C_k, C_j, 1, N)
            sparse = class_tokens.unsqueeze(1) + offsets.unsqueeze(0)  # (B, C_k, C_j, T, N)
            sparse = sparse.reshape(b * c, c * self.num_tokens, n)
        else:
            sparse = features.new_zeros(b * c, 0, n)
        return ClassPrompts(dense, sparse, sim)
