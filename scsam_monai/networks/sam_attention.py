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

When ``torch.compile`` traces it for a CPU, the large global blocks take :func:`chunked_rel_pos_attention` instead
of SDPA: the same formula a chunk of query rows at a time, which Inductor turns into matmuls and one fused
bias-plus-float32-softmax pass per chunk (faster than the CPU flash kernel at head dimension 64, and closer to
float32; see benchmarks/README.md).
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
    "CHUNKED_ATTENTION_MIN_TOKENS",
    "CHUNKED_ATTENTION_ROWS",
    "chunked_rel_pos_attention",
    "decomposed_rel_pos_bias",
    "decomposed_rel_pos_terms",
    "set_sam_attention",
    "sam_attention_kind",
    "reference_copy",
]

#: ``"fused"``: :class:`FusedSamAttention`; ``"reference"``: segment-anything's ``Attention``.
SAM_ATTENTION_KINDS = ("fused", "reference")


def decomposed_rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of SAM's decomposed relative-position bias, in ``q``'s dtype.

    ``rel_h = einsum(q, R_h)`` and ``rel_w = einsum(q, R_w)`` as in segment-anything's ``add_decomposed_rel_pos``;
    the bias of query ``i`` and key ``(kh, kw)`` is ``rel_h[..., i, kh] + rel_w[..., i, kw]``.

    Args:
        q: unscaled queries (B, heads, q_h * q_w, C).
        rel_pos_h: relative-position table of the height axis (L_h, C).
        rel_pos_w: relative-position table of the width axis (L_w, C).
        q_size: query grid (q_h, q_w).
        k_size: key grid (k_h, k_w).

    Returns:
        ``rel_h`` (B, heads, q_h * q_w, k_h) and ``rel_w`` (B, heads, q_h * q_w, k_w), contiguous.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, C)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)  # (q_w, k_w, C)
    b, heads, _, c = q.shape
    r_q = q.reshape(b, heads, q_h, q_w, c)
    # einsum may return permuted strides, and a broadcast addition keeps its inputs' layout: without contiguous
    # inputs the (q_h * q_w) x (k_h * k_w) bias comes out permuted and its reshape copies all of it
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w).contiguous()
    return rel_h.reshape(b, heads, q_h * q_w, k_h), rel_w.reshape(b, heads, q_h * q_w, k_w)


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> torch.Tensor:
    """SAM's decomposed relative-position bias as an additive attention mask, in ``q``'s dtype.

    Equal to what segment-anything's ``add_decomposed_rel_pos`` adds to the scores: ``rel_h[..., :, None] +
    rel_w[..., None, :]`` with the factors of :func:`decomposed_rel_pos_terms` (same arguments).

    Returns:
        Bias (B, heads, q_h * q_w, k_h * k_w).
    """
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    b, heads, rows, k_h = rel_h.shape
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, rows, k_h * rel_w.shape[-1])


#: Token grids at least this large (SAM's global blocks: 64 x 64 = 4096 tokens for a 1024 canvas) take
#: :func:`chunked_rel_pos_attention` when compiled for a CPU; smaller ones (the 14 x 14 windows) take SDPA.
CHUNKED_ATTENTION_MIN_TOKENS = 1024

#: Query rows per chunk of :func:`chunked_rel_pos_attention` for one image (fewer per image in a batch): a chunk's
#: scores (12 heads x 128 x 4096 keys: 12 MiB in bf16) stay in the CPU's caches (measured best of 64-512 rows).
CHUNKED_ATTENTION_ROWS = 128


def chunked_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    rows: int = CHUNKED_ATTENTION_ROWS,
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` by chunks of query rows, the scores' softmax in float32.

    segment-anything's own formulation (``(q * scale) @ k^T``, plus the decomposed bias, softmax, ``@ v``) computed
    a chunk of queries at a time, with the bias added from its two factors instead of materialised. Meant for
    ``torch.compile`` on CPUs: Inductor fuses each chunk's bias addition and float32 softmax into one pass over
    scores that stay in the caches, while the CPU flash kernel behind SDPA reaches about a third of the matmul rate
    at head dimension 64 and needs the whole (heads x 4096 x 4096) bias written to memory first. Measured for one
    ViT-B global block (bf16, 1 thread, compiled): 0.55 s against 0.93 s for SDPA with the mask, and closer to the
    float32 reference (1.3% against 2.5% relative L2 on random inputs: SDPA's mask is rounded to bf16). Eagerly it
    is slower than SDPA, so :class:`FusedSamAttention` uses it only when compiling.

    Args:
        q: unscaled queries (B, heads, L, C).
        k: keys (B, heads, S, C), S = k_h * k_w.
        v: values (B, heads, S, C).
        rel_h: bias factor (B, heads, L, k_h) (:func:`decomposed_rel_pos_terms`).
        rel_w: bias factor (B, heads, L, k_w).
        scale: score scale (``head_dim ** -0.5``).
        rows: query rows per chunk for one image; divided by the batch size.

    Returns:
        (B, heads, L, C) in ``v``'s dtype.
    """
    b, heads, length, _ = q.shape
    k_h, k_w = rel_h.shape[-1], rel_w.shape[-1]
    step = max(1, rows // b)
    # one contiguous copy of each operand: strided views (q, k, v are slices of the qkv projection) would be
    # copied again by every chunk's matmul
    q = (q * scale).contiguous()
    k_t = k.transpose(-2, -1).contiguous()
    v = v.contiguous()
    chunks = []
    for i in range(0, length, step):
        scores = (q[:, :, i : i + step] @ k_t).view(b, heads, -1, k_h, k_w).float()
        scores = scores + rel_h[:, :, i : i + step, :, None] + rel_w[:, :, i : i + step, None, :]
        probs = torch.softmax(scores.flatten(-2), dim=-1).to(v.dtype)
        chunks.append(probs @ v)
    return torch.cat(chunks, dim=2)


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

    @staticmethod
    def use_chunked(q: torch.Tensor) -> bool:
        """Whether :func:`chunked_rel_pos_attention` computes this call: compiling, on a CPU, a large grid."""
        return q.device.type == "cpu" and q.shape[2] >= CHUNKED_ATTENTION_MIN_TOKENS and torch.compiler.is_compiling()

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
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif self.use_chunked(q):
            rel_h, rel_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            out = chunked_rel_pos_attention(q, k, v, rel_h, rel_w, self.scale)
        else:
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
