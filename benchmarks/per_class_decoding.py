"""Reference loops for the training benchmark: the head's classes decoded one at a time (not used by the product).

ScSAM's head decodes all B images x C classes in one batched mask-decoder call. The naive alternatives here feed
the same decoder with the same prompts, one class at a time (C calls of B prompts), or, as segment-anything's
per-image interface and SurgicalSAM's training loop do, one (image, class) prompt at a time (B*C calls). Only the
batching differs: outputs are equal (checked in ``tests/test_benchmark.py``).
"""

from __future__ import annotations

import torch

from scsam_monai.networks.scsam import ScSAMHead, class_embeddings

__all__ = ["NAIVE_MODES", "naive_decode", "naive_forward_with_aux"]

NAIVE_MODES = ("per_class", "per_prompt")


def naive_decode(head: ScSAMHead, features: torch.Tensor, mode: str = "per_class") -> torch.Tensor:
    """Logits ``(B, C, 4g, 4g)`` of fused features ``(B, N, g, g)``, decoding the classes in a Python loop.

    Args:
        head: the ScSAM head whose prompt encoder and mask decoder are used.
        features: fused features V_f.
        mode: ``"per_class"`` (one decoder call per class, all images at once) or ``"per_prompt"`` (one call
            per image and class).
    """
    if mode not in NAIVE_MODES:
        raise ValueError(f"mode must be one of {NAIVE_MODES}, got {mode!r}.")
    b, n, h, w = features.shape
    c = head.num_classes
    features = features.contiguous(memory_format=torch.channels_last)  # the layout the batched path uses
    prompts = head.class_prompts(features)
    dense = prompts.dense.reshape(b, c, n, h, w)
    sparse = prompts.sparse.reshape(b, c, *prompts.sparse.shape[1:])
    pe = head.dense_pe(device=features.device, dtype=features.dtype)
    per_class = []
    for k in range(c):
        if mode == "per_class":
            masks, _ = head.mask_decoder(features, pe, sparse[:, k], dense[:, k], multimask_output=False)
        else:
            masks = torch.cat(
                [
                    head.mask_decoder(
                        features[i : i + 1], pe, sparse[i : i + 1, k], dense[i : i + 1, k], multimask_output=False
                    )[0]
                    for i in range(b)
                ]
            )
        per_class.append(masks[:, 0])
    return torch.stack(per_class, dim=1)


def naive_forward_with_aux(
    head: ScSAMHead,
    sam_embedding: torch.Tensor | None,
    mae_embedding: torch.Tensor | None,
    label: torch.Tensor,
    mode: str = "per_class",
) -> tuple[torch.Tensor, dict]:
    """``ScSAMHead.forward_with_aux`` with the classes decoded by :func:`naive_decode`."""
    fused = head.encode_features(sam_embedding, mae_embedding)
    logits = naive_decode(head, fused.features, mode)
    embeddings, ids = class_embeddings(fused.features, label, head.num_classes)
    aux = {
        "aligned_sam": fused.aligned_sam,
        "aligned_mae": fused.aligned_mae,
        "prototypes": head.prompt_encoder.prototypes,
        "class_embeddings": embeddings,
        "class_ids": ids,
    }
    return logits, aux
