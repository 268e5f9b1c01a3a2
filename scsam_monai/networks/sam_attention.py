"""Fused attention for SAM's ViT image encoder, loading the official checkpoints unchanged.

segment-anything's ``Attention`` (``segment_anything/modeling/image_encoder.py``) computes
``softmax(q k^T * scale + B) v`` with explicit matmuls, where ``B`` is the decomposed relative-position bias of
MViTv2: ``B[(qh, qw), (kh, kw)] = q . R_h[qh, kh] + q . R_w[qw, kw]`` (``q`` unscaled). It writes the whole
attention matrix three times (scores, scores + bias, softmax) before the second matmul: at SAM's 64 x 64 token grid
a global block holds 12 x 4096 x 4096 scores per image.

:class:`FusedSamAttention` computes the same function with ``torch.nn.functional.scaled_dot_product_attention``,
passing ``B`` as the additive ``attn_mask`` (built in the activation dtype: bf16 under autocast), so the scores,
their softmax and the product with ``v`` run in one fused kernel (the CPU flash kernel, or the memory-efficient
kernel on CUDA, which both take an arbitrary additive mask). It holds the very ``qkv``, ``proj``, ``rel_pos_h`` and
``rel_pos_w`` of the module it replaces, under the same names: state-dict keys are unchanged, so official SAM
checkpoints load strictly before or after the swap. :func:`set_sam_attention` swaps every block of an
``ImageEncoderViT`` one way or the other (``"fused"`` / ``"reference"``), windowed and global blocks alike.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos

__all__ = [
    "SAM_ATTENTION_KINDS",
    "FusedSamAttention",
    "decomposed_rel_pos_bias",
    "set_sam_attention",
    "sam_attention_kind",
    "reference_copy",
]

#: ``"fused"``: :class:`FusedSamAttention`; ``"reference"``: segment-anything's ``Attention``.
SAM_ATTENTION_KINDS = ("fused", "reference")


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> torch.Tensor:
    """SAM's decomposed relative-position bias as an additive attention mask, in ``q``'s dtype.

    Equal to what segment-anything's ``add_decomposed_rel_pos`` adds to the scores: ``rel_h[..., :, None] +
    rel_w[..., None, :]`` with ``rel_h = einsum(q, R_h)`` and ``rel_w = einsum(q, R_w)``.

    Args:
        q: unscaled queries (B, heads, q_h * q_w, C).
        rel_pos_h: relative-position table of the height axis (L_h, C).
        rel_pos_w: relative-position table of the width axis (L_w, C).
        q_size: query grid (q_h, q_w).
        k_size: key grid (k_h, k_w).

    Returns:
        Bias (B, heads, q_h * q_w, k_h * k_w).
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, C)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # (q_w, k_w, C)
    b, heads, _, c = q.shape
    r_q = q.reshape(b, heads, q_h, q_w, c)
    # einsum may return permuted strides, and a broadcast addition keeps its inputs' layout: without contiguous
    # inputs the (q_h * q_w) x (k_h * k_w) bias comes out permuted and the reshape below copies all of it
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w).contiguous()
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, q_h * q_w, k_h * k_w)


class FusedSamAttention(nn.Module):
    """segment-anything's ViT ``Attention`` through ``F.scaled_dot_product_attention``, same parameters and keys.

    Args:
        reference: the ``segment_anything`` ``Attention`` to replace; its ``qkv`` and ``proj`` Linear layers and its
            relative-position tables are taken over (shared, not copied).

    Example::

        block.attn = FusedSamAttention(block.attn)
        y = block.attn(x)  # x: (B, H, W, C) -> (B, H, W, C)
    """

    def __init__(self, reference: Attention) -> None:
        super().__init__()
        if not isinstance(reference, Attention):
            raise TypeError(f"expected segment_anything's image-encoder Attention, got {type(reference).__name__}.")
        self.num_heads = reference.num_heads
        self.scale = reference.scale
        self.use_rel_pos = reference.use_rel_pos
        if self.use_rel_pos:  # parameters before submodules, as in Attention (state-dict order)
            self.rel_pos_h = reference.rel_pos_h
            self.rel_pos_w = reference.rel_pos_w
        self.qkv = reference.qkv
        self.proj = reference.proj

    def to_reference(self) -> Attention:
        """A segment-anything ``Attention`` holding this module's parameters (shared)."""
        dim = self.qkv.in_features
        use_rel_pos = self.use_rel_pos
        with torch.device("meta"):  # no allocation: every tensor is replaced below
            size = (self.rel_pos_h.shape[0] + 1) // 2 if use_rel_pos else None
            width = (self.rel_pos_w.shape[0] + 1) // 2 if use_rel_pos else None
            ref = Attention(
                dim,
                num_heads=self.num_heads,
                qkv_bias=self.qkv.bias is not None,
                use_rel_pos=use_rel_pos,
                input_size=(size, width) if use_rel_pos else None,
            )
        ref.qkv, ref.proj = self.qkv, self.proj
        if use_rel_pos:
            ref.rel_pos_h, ref.rel_pos_w = self.rel_pos_h, self.rel_pos_w
        ref.scale = self.scale
        return ref.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the token grid.

        Args:
            x: tokens (B, H, W, C) of a window or of the whole grid.

        Returns:
            Tokens (B, H, W, C).
        """
        b, h, w, _ = x.shape
        # (3, B, heads, H * W, C / heads), as segment-anything splits them
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def set_sam_attention(encoder: ImageEncoderViT, kind: str) -> ImageEncoderViT:
    """Make every block of ``encoder`` use ``kind`` attention, in place; parameters and state-dict keys unchanged.

    Args:
        encoder: segment-anything's ``ImageEncoderViT`` (weights already loaded or not: nothing is copied).
        kind: ``"fused"`` or ``"reference"`` (see :data:`SAM_ATTENTION_KINDS`).

    Returns:
        ``encoder``.
    """
    if kind not in SAM_ATTENTION_KINDS:
        raise ValueError(f"unknown SAM attention {kind!r}, expected one of {SAM_ATTENTION_KINDS}.")
    for block in encoder.blocks:
        attn = block.attn
        if kind == "fused" and not isinstance(attn, FusedSamAttention):
            block.attn = FusedSamAttention(attn)
        elif kind == "reference" and isinstance(attn, FusedSamAttention):
            block.attn = attn.to_reference()
    return encoder


def sam_attention_kind(encoder: ImageEncoderViT) -> str:
    """``"fused"`` or ``"reference"``: the attention of ``encoder``'s blocks (``"mixed"`` if they differ)."""
    kinds = {"fused" if isinstance(b.attn, FusedSamAttention) else "reference" for b in encoder.blocks}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def reference_copy(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """A segment-anything ``ImageEncoderViT`` with reference attention sharing ``encoder``'s weights (no copy).

    The modules are new, the parameters and buffers are the same tensors: the benchmark times segment-anything's
    own formulation against ours on identical weights without holding them twice.
    """
    memo = {id(t): t for t in (*encoder.parameters(), *encoder.buffers())}
    clone = copy.deepcopy(encoder, memo)
    if getattr(clone, "_compiled_call_impl", None) is not None:
        clone._compiled_call_impl = None  # never inherit an in-place torch.compile
    return set_sam_attention(clone, "reference")
