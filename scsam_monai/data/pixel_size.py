"""Pixel sizes: what a model was trained at, what an input is at, and the factor between them.

A model sees its training slices on a square canvas (1024 pixels for SAM ViT-B): each slice is resized so that
its longest side fills the canvas. The **model's pixel size** is therefore the size of one canvas pixel in
training: the data's pixel size times the training slices' longest side over the canvas (BetaSeg slices of 1024
pixels at 4 nm on a 1024 canvas: 4 nm; slices of 512 pixels at 8 nm: 4 nm too). Training records it with the
weights (:class:`~scsam_monai.data.preprocessing.ImagePreprocessing`); inference resamples every input slice to it
and tiles what does not fit the canvas, so that an 8,000-pixel slice is segmented at the scale the model learned
instead of being squeezed onto the canvas.

Pixel sizes are in nanometres, in-plane (EM slices are square-pixelled; an input whose y and x sizes differ is
resampled by their geometric mean, with a warning).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from scsam_monai.io.readers import Volume, open_volume

__all__ = [
    "NM_PER_UNIT",
    "datalist_pixel_size",
    "in_plane_pixel_size",
    "input_pixel_size",
    "record_training_pixel_size",
    "to_nanometres",
    "training_pixel_size",
]

logger = logging.getLogger(__name__)

NM_PER_UNIT: dict[str, float] = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
}
"""Nanometres per unit, for the unit names the readers meet (lower case; plural ``s`` is dropped)."""


def to_nanometres(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as nanometres; None for a unit this table does not know (``pixel``, ``""``)."""
    if unit is None:
        return None
    name = unit.strip().lower()
    name = name[:-1] if name.endswith("s") and name[:-1] in NM_PER_UNIT else name
    factor = NM_PER_UNIT.get(name)
    return None if factor is None else float(value) * factor


def _check_positive(value: Any, what: str) -> float:
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of nanometres, got {value!r}.") from None
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"{what} must be a positive number of nanometres, got {value!r}.")
    return size


def in_plane_pixel_size(spacing_yx: Iterable[float | None], unit: str | None, source: str) -> tuple[float | None, str]:
    """The in-plane pixel size (nm) of a slice whose y and x spacings are ``spacing_yx`` in ``unit``.

    Returns:
        ``(size, how)``: None when the file gives no usable size (no spacing, or the readers' placeholder 1.0
        without a unit); ``how`` says where the size came from or why there is none (for logs and messages).
    """
    values = [None if v is None else float(v) for v in spacing_yx]
    if any(v is None or not math.isfinite(v) or v <= 0 for v in values):
        return None, f"{source} gives no in-plane pixel size"
    if unit is None and all(v == 1.0 for v in values):
        return None, f"{source} gives no pixel size (spacing 1 without a unit)"
    if unit is None:
        sizes, how = values, f"{source}'s spacing, which names no unit: taken as nanometres"
    else:
        sizes = [to_nanometres(v, unit) for v in values]
        if any(s is None for s in sizes):
            return None, f"{source} gives its spacing in {unit!r}, which is not a length"
        how = f"{source}'s metadata ({', '.join(f'{v:g}' for v in values)} {unit})"
    y, x = sizes  # type: ignore[misc]
    if abs(y - x) > 0.01 * max(y, x):
        logger.warning(
            "%s: pixels of %.4g x %.4g nm are not square; slices are resampled by their geometric mean.", source, y, x
        )
    return math.sqrt(y * x), how  # type: ignore[operator]


def input_pixel_size(volume: Volume, override: float | None = None) -> tuple[float | None, str]:
    """The pixel size (nm) of an input volume's slices: ``override`` (``--input_pixel_size``) or its metadata.

    Returns:
        ``(size or None, where it came from)``.
    """
    if override is not None:
        return _check_positive(override, "--input_pixel_size"), "--input_pixel_size"
    spacing = volume.spacing or (None, None, None)
    return in_plane_pixel_size(spacing[-2:], volume.unit, volume.source)


def datalist_pixel_size(datalist: str | Path | Mapping[str, Any] | None) -> float | None:
    """The pixel size (nm) a datalist records for its images (``scsam-prepare`` writes ``pixel_size``), or None."""
    if datalist is None:
        return None
    if isinstance(datalist, Mapping):
        data = datalist
    else:
        path = Path(datalist)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # the start-up checks report an unreadable datalist
    value = data.get("pixel_size") if isinstance(data, Mapping) else None
    return None if value is None else _check_positive(value, f"{datalist}: pixel_size")


def training_pixel_size(items: Iterable[Mapping[str, Any]], data_pixel_size: float, canvas: int) -> float:
    """The model's pixel size (nm) after training on ``items`` at ``data_pixel_size`` with a ``canvas``-pixel canvas.

    Each training slice reaches the canvas resized by ``canvas / longest side``, so one canvas pixel is
    ``data_pixel_size * longest side / canvas``; the median over the items is taken (slices of several sizes
    are warned about: the model then learned several scales).

    Raises:
        ValueError: no items, or a pixel size that is not positive.
    """
    size = _check_positive(data_pixel_size, "pixel_size")
    sides = []
    for item in items:
        with open_volume(item["image"]) as volume:
            sides.append(max(volume.shape[-2:]))
    if not sides:
        raise ValueError("the training split is empty: no pixel size can be derived from it.")
    longest = float(np.median(sides))
    if max(sides) > 1.1 * min(sides):
        logger.warning(
            "Training slices have longest sides from %d to %d pixels: the model sees them at %.4g to %.4g nm per "
            "canvas pixel; the median, %.4g nm, is recorded as its pixel size.",
            min(sides),
            max(sides),
            size * min(sides) / canvas,
            size * max(sides) / canvas,
            size * longest / canvas,
        )
    return size * longest / canvas


def record_training_pixel_size(
    network: nn.Module,
    *,
    pixel_size: float | None,
    datalist: str | Path | None,
    items: Iterable[Mapping[str, Any]],
    canvas: int,
) -> float | None:
    """Record the model's pixel size in the head about to be trained (``train.yaml``'s ``initialize``).

    Args:
        network: the head (its preprocessing is saved with its weights in ``model.pt``).
        pixel_size: the training images' pixel size in nm (``--pixel_size``); None: the datalist's record.
        datalist: the datalist file (``scsam-prepare`` records the pixel size of the slices it wrote).
        items: the training split's items.
        canvas: side of the encoders' square canvas.

    Returns:
        The model's pixel size in nm, or None when neither the setting nor the datalist gives the data's (the model
        then records none, and inference squeezes every slice onto the canvas as models without one do).
    """
    data_size = _check_positive(pixel_size, "pixel_size") if pixel_size is not None else datalist_pixel_size(datalist)
    if data_size is None:
        logger.info(
            "No pixel size for the training images (neither --pixel_size nor the datalist's pixel_size): the model "
            "records none, and inference will resize every slice onto the %d-pixel canvas.",
            canvas,
        )
        return None
    if getattr(network, "image_preprocessing", None) is None:
        logger.info("The trained network (%s) records no preprocessing, so no pixel size.", type(network).__name__)
        return None
    size = training_pixel_size(items, data_size, canvas)
    preprocessing = network.image_preprocessing.with_pixel_size(size)
    preprocessing.attach(network)
    logger.info(
        "Training images at %.4g nm per pixel: the model's pixel size is %.4g nm per canvas pixel.", data_size, size
    )
    return size
