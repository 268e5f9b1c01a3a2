"""SAM's mask decoder, decoding one prompt per image embedding in a single batched call.

segment-anything's ``MaskDecoder.predict_masks`` repeats one image embedding for every prompt
(``repeat_interleave`` over the prompt batch), which only fits one image with many prompts. ScSAM decodes
B images x C classes at once, each (image, class) pair with its own image embedding and prompts, so this
subclass overrides only that step. Parameter names are unchanged: SAM checkpoints load as they are.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

__all__ = ["BatchedMaskDecoder", "build_mask_decoder"]


class BatchedMaskDecoder(MaskDecoder):
    """``MaskDecoder`` whose inputs are already one row per prompt: embeddings ``(P, N, g, g)`` for P prompts."""

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks ``(P, M, 4g, 4g)`` and IoU scores ``(P, M)``.

        Args:
            image_embeddings: one embedding per prompt, ``(P, N, g, g)``.
            image_pe: positional encoding, ``(1, N, g, g)``.
            sparse_prompt_embeddings: ``(P, T, N)``.
            dense_prompt_embeddings: ``(P, N, g, g)``.
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

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
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
