"""Reading 2D images and label maps named in a datalist.

TIFF goes through tifffile (any bit depth, first page of a stack); every other format through MONAI's
``LoadImage`` (ITK, nibabel, PIL). Errors name the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_image_2d"]

_TIFF_SUFFIXES = (".tif", ".tiff")


def read_image_2d(path: str | Path) -> np.ndarray:
    """Read a single-channel 2D image ``(H, W)`` from ``path``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be read or is not a 2D single-channel image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            from monai.transforms import LoadImage

            array = np.asarray(LoadImage(image_only=True)(str(path)))
            if array.ndim == 2:
                array = array.T  # MONAI's readers return (W, H) for 2D images; restore row-major (H, W).
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ValueError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D single-channel image, got an array of shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{path}: the image is empty.")
    return array
