"""PNG, JPEG and BMP through Pillow: 1-bit images read as ``bool``, palette images as their indices.

A colour image is accepted only when its three channels are equal (a greyscale image saved as RGB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scsam_monai.io.readers.dims import cached_whole
from scsam_monai.io.readers.volume import DataPreparationError, Volume

__all__ = ["open_pillow", "pillow_header", "read_pillow"]

_PIL_DTYPES = {
    "1": "bool",
    "L": "uint8",
    "P": "uint8",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I": "int32",
    "F": "float32",
}


def read_pillow(path: Path) -> np.ndarray:
    """The pixels of a PNG, JPEG or BMP file as a 2D array (1-bit as ``bool``, palette images as indices)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "1":  # Pillow exposes 1-bit pixels as bool bytes of 0/255: make them canonical
                return np.asarray(image).view(np.uint8) != 0
            if mode in ("L", "P", "I", "F") or mode.startswith("I;16"):
                return np.asarray(image)
            if mode in ("LA", "PA"):
                return np.asarray(image.getchannel(0))
            rgb = np.asarray(image.convert("RGB"))
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataPreparationError(f"{path}: is a colour image ({mode}); EM data must be single-channel greyscale.")
    return rgb[..., 0]


def pillow_header(path: Path) -> tuple[tuple[int, int], np.dtype]:
    """``((height, width), dtype)`` of a Pillow-read image, from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            return (height, width), np.dtype(_PIL_DTYPES.get(image.mode, "uint8"))
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err


def open_pillow(path: Path) -> Volume:
    """A PNG, JPEG or BMP image as a volume of one slice, read whole at the first read."""
    (h, w), dtype = pillow_header(path)
    read = cached_whole(lambda: read_pillow(path)[None])
    return Volume(
        source=str(path), format=path.suffix.lower().lstrip("."), shape=(1, h, w), dtype=dtype, read=read, files=[path]
    )
