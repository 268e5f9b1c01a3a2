"""``prepare_batch`` for MONAI engines fed with cached embeddings."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["EmbeddingBatch"]


def _to(x: torch.Tensor | None, device: torch.device | str | None, non_blocking: bool) -> torch.Tensor | None:
    if x is None:
        return None
    return torch.as_tensor(x).to(device=device, non_blocking=non_blocking)


def _embedding_to(x: torch.Tensor | None, device: torch.device | str | None, non_blocking: bool) -> torch.Tensor | None:
    """Move an embedding batch (float16 from the cache) to ``device``, then make it float32 there."""
    x = _to(x, device, non_blocking)
    return x.float() if x is not None and x.is_floating_point() else x


def _common_size(sizes: torch.Tensor, name: str) -> tuple[int, int]:
    sizes = torch.as_tensor(sizes).reshape(-1, 2)
    if not bool((sizes == sizes[0]).all()):
        raise ValueError(
            f"A batch mixes images of different {name}s {sizes.tolist()}; use batch_size 1 for full-resolution "
            "evaluation of images of different sizes."
        )
    return int(sizes[0, 0]), int(sizes[0, 1])


class EmbeddingBatch:
    """Turn a batch of cached embeddings into ``(sam, label, (mae,), kwargs)`` for a MONAI engine.

    The engine's inferer then calls ``head(sam, mae, **kwargs)``.

    Args:
        full_resolution: pass ``input_size``/``original_size`` so that the head returns logits at the
            original image size (evaluation); otherwise logits stay on the decoder's canvas grid (training).
    """

    def __init__(self, full_resolution: bool = False) -> None:
        self.full_resolution = full_resolution

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: torch.device | str | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor | None, torch.Tensor, tuple, dict]:
        sam = _embedding_to(batchdata.get("sam"), device, non_blocking)
        mae = _embedding_to(batchdata.get("mae"), device, non_blocking)
        label = _to(batchdata["label"], device, non_blocking)
        extra: dict = {}
        if self.full_resolution:
            extra["input_size"] = _common_size(batchdata["input_size"], "input size")
            extra["original_size"] = _common_size(batchdata["original_size"], "original size")
        return sam, label, (mae,), extra
