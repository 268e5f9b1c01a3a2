"""The one palette of class colours, and the blend of a label map over its image, for every overlay.

Evaluation overlays (``OverlayWriter``), the experiments' qualitative figure and the overlay PNGs of volume
inference all colour label value ``k`` with :func:`class_colour` ``(k)`` over the image as
:func:`display_image` shows it, so a class looks the same wherever a user meets it: nucleus blue, mitochondria
red, granules yellow (the classes of the bundle's data, values 1, 2, 3), then green and purple, repeating.
"""

from __future__ import annotations

import numpy as np

from scsam_monai.data.normalize import normalize_slice

__all__ = ["CLASS_COLOURS", "class_colour", "display_image", "colourise", "overlay_rgb8"]

CLASS_COLOURS = np.array(
    [[0.12, 0.47, 0.71], [0.89, 0.10, 0.11], [1.00, 0.80, 0.00], [0.17, 0.63, 0.17], [0.58, 0.40, 0.74]]
)
"""RGB in [0, 1] of label values 1, 2, ... (row ``k - 1`` for value ``k``, repeating after the last row)."""


def class_colour(value: int) -> np.ndarray:
    """RGB in [0, 1] of label value ``value`` (1 or more; 0 is background and has no colour)."""
    if int(value) < 1:
        raise ValueError(f"label value {value} has no colour: 0 is background, classes start at 1.")
    return CLASS_COLOURS[(int(value) - 1) % len(CLASS_COLOURS)]


def display_image(image: np.ndarray) -> np.ndarray:
    """A slice as shown under overlays: float32 in [0, 1] between its 0.5th and 99.5th percentiles (the per-image
    normalisation of :func:`~scsam_monai.data.normalize.normalize_slice`), clipped."""
    return np.clip(normalize_slice(image), 0.0, 1.0)


def colourise(image: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB float32 ``(H, W, 3)`` in [0, 1]: the image in grey, each labelled pixel blended with its class colour.

    Args:
        image: the slice ``(H, W)``, any real dtype.
        label: its label map ``(H, W)``: 0 background, 1..C classes.
        alpha: weight of the class colour in the blend.
    """
    rgb = np.repeat(display_image(image)[..., None], 3, axis=-1)
    label = np.asarray(label).astype(np.int64)
    if label.shape != rgb.shape[:2]:
        raise ValueError(f"label map {label.shape} and image {rgb.shape[:2]} differ in size.")
    labelled = label != 0
    colours = CLASS_COLOURS[(label[labelled] - 1) % len(CLASS_COLOURS)]
    rgb[labelled] = (1 - alpha) * rgb[labelled] + alpha * colours
    return rgb


def overlay_rgb8(image: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB ``(H, 2 W, 3)``: the slice in grey beside the same slice with its label map blended in colour."""
    grey = np.repeat(display_image(image)[..., None], 3, axis=-1)
    panels = np.concatenate([grey, colourise(image, label, alpha)], axis=1)
    return np.round(panels * 255.0).astype(np.uint8)
