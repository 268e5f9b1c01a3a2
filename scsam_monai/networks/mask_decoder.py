"""SAM's mask decoder, decoding one prompt per image embedding in a single batched call.

segment-anything's ``MaskDecoder.predict_masks`` repeats one image embedding for every prompt
(``repeat_interleave`` over the prompt batch), which only fits one image with many prompts. ScSAM decodes
B images x C classes at once, each (image, class) pair with its own image embedding and prompts, so this
subclass overrides that step. Parameter names are unchanged: SAM checkpoints load as they are.

Speed (same outputs and gradients up to float rounding; the benchmark times it): attention through
``F.scaled_dot_product_attention`` (:class:`FusedAttention`); ``keys + key_pe`` computed once per two-way block
(:class:`FusedTwoWayAttentionBlock`); with ``multimask_output=False`` only the single-mask token is turned into a
mask (SAM computes all four and slices one); the upscaling's channel LayerNorm as one ``F.layer_norm`` (float32
under autocast); inputs in channels-last memory (as :class:`~scsam_monai.networks.scsam.ScSAMHead` passes them)
are the transformer's token layout, so no transposed copy of the image tokens is made, and the mask product keeps
the gradient of the upscaled features in their layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch import nn

__all__ = [
    "ChannelsLastLayerNorm2d",
    "FusedAttention",
    "FusedTwoWayAttentionBlock",
    "BatchedMaskDecoder",
    "build_mask_decoder",
]


class ChannelsLastLayerNorm2d(LayerNorm2d):
    """segment-anything's ``LayerNorm2d`` (normalise over channels of ``(B, C, H, W)``) as one fused kernel.

    Same parameters (``weight``, ``bias``) and result; the normalisation runs on the channels-last view, so a
    channels-last input needs no copy and the output keeps that memory format.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, C, H, W)`` over C."""
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class FusedAttention(Attention):
    """segment-anything's decoder ``Attention`` computed by ``F.scaled_dot_product_attention``.

    Same parameters and result (softmax of ``q k^T / sqrt(d)``, per head); the fused kernel neither copies the
    heads apart nor materialises the ``(P, heads, 4096, tokens)`` attention matrix.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend queries ``(P, Nq, N)`` to keys ``(P, Nk, N)`` and values ``(P, Nk, N)``."""
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))

    @classmethod
    def like(cls, attention: Attention) -> FusedAttention:
        """A ``FusedAttention`` with the sizes and the weights of ``attention``."""
        fused = cls(
            attention.embedding_dim,
            attention.num_heads,
            downsample_rate=attention.embedding_dim // attention.internal_dim,
        )
        fused.load_state_dict(attention.state_dict())
        return fused.to(attention.q_proj.weight.device)


class FusedTwoWayAttentionBlock(TwoWayAttentionBlock):
    """segment-anything's ``TwoWayAttentionBlock`` adding the positional encoding to the image tokens once.

    SAM's block computes ``keys + key_pe`` twice (for the token-to-image and the image-to-token attention) while
    ``keys`` is unchanged in between; this block reuses the sum. Same parameters, same result.
    """

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update prompt tokens ``(P, T, N)`` and image tokens ``(P, g*g, N)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys

    @classmethod
    def like(cls, block: TwoWayAttentionBlock) -> FusedTwoWayAttentionBlock:
        """A ``FusedTwoWayAttentionBlock`` with the sizes and the weights of ``block``."""
        cross = block.cross_attn_token_to_image
        fused = cls(
            block.self_attn.embedding_dim,
            block.self_attn.num_heads,
            mlp_dim=block.mlp.lin1.out_features,
            activation=type(block.mlp.act),
            attention_downsample_rate=cross.embedding_dim // cross.internal_dim,
            skip_first_layer_pe=block.skip_first_layer_pe,
        )
        fused.load_state_dict(block.state_dict())
        return fused.to(block.norm1.weight.device)


def _fuse(module: nn.Module) -> None:
    """Replace segment-anything's ``TwoWayAttentionBlock`` and ``Attention`` below ``module`` by the fused ones."""
    for name, child in module.named_children():
        if type(child) is TwoWayAttentionBlock:
            child = FusedTwoWayAttentionBlock.like(child)
            setattr(module, name, child)
        if type(child) is Attention:
            setattr(module, name, FusedAttention.like(child))
        else:
            _fuse(child)


class BatchedMaskDecoder(MaskDecoder):
    """``MaskDecoder`` whose inputs are already one row per prompt: embeddings ``(P, N, g, g)`` for P prompts."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        old = self.output_upscaling[1]
        if isinstance(old, LayerNorm2d):
            self.output_upscaling[1] = ChannelsLastLayerNorm2d(old.weight.shape[0], eps=old.eps)
        _fuse(self.transformer)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``(P, 1, 4g, 4g)`` (``(P, 3, 4g, 4g)`` with ``multimask_output``) and IoU scores ``(P, 1|3)``.

        Args:
            image_embeddings: one embedding per prompt, ``(P, N, g, g)``.
            image_pe: positional encoding, ``(1, N, g, g)``.
            sparse_prompt_embeddings: ``(P, T, N)``.
            dense_prompt_embeddings: ``(P, N, g, g)``.
            multimask_output: return SAM's three multimask outputs instead of its single mask.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output,
        )
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        return masks[:, :1], iou_pred[:, :1]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks ``(P, M, 4g, 4g)`` and IoU scores ``(P, 4)``.

        Args:
            image_embeddings: one embedding per prompt, ``(P, N, g, g)``.
            image_pe: positional encoding, ``(1, N, g, g)``.
            sparse_prompt_embeddings: ``(P, T, N)``.
            dense_prompt_embeddings: ``(P, N, g, g)``.
            multimask_output: False computes only the single-mask output (M = 1); None or True all four (M = 4).
        """
        p = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(p, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)

        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(p, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        src = src.transpose(1, 2).reshape(b, c, h, w)  # a view (channels-last) when possible
        upscaled = self.output_upscaling(src)
        used = 1 if multimask_output is False else self.num_mask_tokens
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps[:used])], dim=1
        )
        b, c, h, w = upscaled.shape
        if upscaled.is_contiguous(memory_format=torch.channels_last) and not upscaled.is_contiguous():
            # pixels as rows: keeps the gradient of ``upscaled`` channels-last like ``upscaled`` itself (a mixed
            # layout makes the GELU backward several times slower on CPU)
            pixels = upscaled.permute(0, 2, 3, 1).reshape(b, h * w, c)
            masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        else:
            masks = (hyper_in @ upscaled.flatten(2)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def build_mask_decoder(
    *, transformer_dim: int = 256, depth: int = 2, mlp_dim: int = 2048, num_heads: int = 8
) -> BatchedMaskDecoder:
    """Build SAM's mask decoder with SAM's own settings (those of ``segment_anything.build_sam``).

    Args:
        transformer_dim: channel width N of embeddings and prompts (256 in every SAM).
        depth: two-way transformer depth.
        mlp_dim: two-way transformer MLP width.
        num_heads: attention heads.
    """
    return BatchedMaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim, mlp_dim=mlp_dim, num_heads=num_heads),
        transformer_dim=transformer_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
