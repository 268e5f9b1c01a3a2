"""Reading 2D images and label maps named in a datalist.

Built on the readers of :mod:`scsam_monai.data.io`: TIFF through tifffile (any bit depth), PNG/JPEG/BMP through
Pillow, NIfTI/MHA/NRRD through MONAI's ``LoadImage`` (transposed back to the file's (H, W)), HDF5 with a single
dataset through h5py. Errors name the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import DataPreparationError, open_volume

__all__ = ["read_image_2d", "check_pixels"]


def check_pixels(array: np.ndarray, source: str | Path) -> None:
    """Check that ``array`` holds usable pixels: a non-empty array of integers, booleans or finite floats.

    Args:
        array: the pixels.
        source: how the message names them (the file).

    Raises:
        DataPreparationError: the array is empty, of another dtype (complex, text, records), or holds NaN or
            infinite values; the message says how many and where the first one is.
    """
    if array.size == 0:
        raise DataPreparationError(f"{source}: the image is empty (shape {tuple(array.shape)}).")
    if array.dtype.kind not in "biuf":
        raise DataPreparationError(
            f"{source}: has pixels of dtype {array.dtype}; expected integer, boolean or floating-point pixels."
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataPreparationError(
                f"{source}: holds {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite "
                f"values (the first at index {first}); replace them (e.g. with the background intensity) before "
                "training or inference."
            )


def read_image_2d(path: str | Path) -> np.ndarray:
    """Read a single-channel 2D image ``(H, W)`` from ``path`` (1-bit images come back as uint8 0/1).

    Raises:
        FileNotFoundError: when the file does not exist.
        DataPreparationError: (a ``ValueError``) when it cannot be read (truncated, corrupt, unknown format), is
            not one 2D single-channel image (a 3D stack, 4D data, several channels), is empty, has pixels of
            another dtype than integers, booleans or floats, or holds NaN or infinite values. The message names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    with open_volume(path) as volume:
        if volume.shape[0] != 1:
            raise DataPreparationError(
                f"{path}: expected a 2D single-channel image, got a stack of shape {volume.shape}."
            )
        if min(volume.shape) == 0:
            raise DataPreparationError(f"{path}: the image is empty (shape {volume.shape[1:]}).")
        array = volume.read_slice(0)
    check_pixels(array, path)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array
