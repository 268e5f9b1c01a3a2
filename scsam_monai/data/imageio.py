"""Reading 2D images and label maps named in a datalist.

Built on the readers of :mod:`scsam_monai.data.io`: TIFF through tifffile (any bit depth), PNG/JPEG/BMP through
Pillow, NIfTI/MHA/NRRD through MONAI's ``LoadImage`` (transposed back to the file's (H, W)), HDF5 with a single
dataset through h5py. Errors name the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import open_volume

__all__ = ["read_image_2d"]


def read_image_2d(path: str | Path) -> np.ndarray:
    """Read a single-channel 2D image ``(H, W)`` from ``path`` (1-bit images come back as uint8 0/1).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be read or is not a 2D single-channel image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    with open_volume(path) as volume:
        if volume.shape[0] != 1:
            raise ValueError(f"{path}: expected a 2D single-channel image, got a stack of shape {volume.shape}.")
        array = volume.read_slice(0)
    if array.size == 0:
        raise ValueError(f"{path}: the image is empty.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array
