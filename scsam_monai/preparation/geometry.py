"""In-plane geometry of prepared slices: the crop, and downscaling (block mean for images, block centre for
labels, over the same blocks)."""

from __future__ import annotations

import numpy as np

__all__ = ["crop_slice", "downscale_image", "downscale_label"]


def crop_slice(array: np.ndarray, crop: tuple | None) -> np.ndarray:
    """The in-plane ``((y0, y1), (x0, x1))`` crop of a slice (the slice itself when ``crop`` is None)."""
    if crop is None:
        return array
    (y0, y1), (x0, x1) = crop
    return array[y0:y1, x0:x1]


def downscale_image(array: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor x factor`` pixels (the remainder at the bottom/right is dropped)."""
    if factor == 1:
        return array
    h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    blocks = np.asarray(array[:h, :w], dtype=np.float64).reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3))


def downscale_label(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest: the centre pixel of each ``factor x factor`` block (the same blocks as the image)."""
    if factor == 1:
        return array
    h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    return array[factor // 2 : h : factor, factor // 2 : w : factor]
