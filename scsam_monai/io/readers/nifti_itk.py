"""NIfTI, MHA/MHD and NRRD through MONAI's ``NibabelReader`` and ``ITKReader``, read whole.

MONAI returns these as (x, y, z); they are transposed to ``(z, y, x)``, so a 2D image is ``(H, W)`` as the
file shows it, and the header's spacing is reordered to match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scsam_monai.io.formats import NIFTI_SUFFIXES, file_suffix
from scsam_monai.io.readers.volume import DataPreparationError, Volume

__all__ = ["open_monai"]


def open_monai(path: Path) -> Volume:
    """NIfTI through MONAI's ``NibabelReader``, MHA/MHD/NRRD (and other ITK formats) through its ``ITKReader``:
    the readers of ``LoadImage``, used directly so that the file's dtype is kept (``LoadImage`` makes uint16
    int32 or float32)."""
    from monai.data import ITKReader, NibabelReader

    nifti = file_suffix(path) in NIFTI_SUFFIXES
    try:
        reader = NibabelReader() if nifti else ITKReader()
        array, meta = reader.get_data(reader.read(str(path)))
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err
    array = np.asarray(array)
    try:
        pixdim = np.asarray(meta["pixdim"], float)[1:4] if nifti else np.asarray(meta["spacing"], float)
        pixdim = [float(v) for v in pixdim.ravel()]
    except Exception:  # noqa: BLE001 - spacing is optional
        pixdim = []
    while array.ndim > 2 and array.shape[-1] == 1:  # trailing channel / time dims of size 1
        array = array[..., 0]
    if array.ndim == 2:
        array = array.T[None]  # MONAI returns (x, y): restore (H, W)
        spacing = (None, *pixdim[:2][::-1]) if len(pixdim) >= 2 else None
    elif array.ndim == 3:
        array = array.transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
        spacing = tuple(pixdim[:3][::-1]) if len(pixdim) >= 3 else None
    else:
        raise DataPreparationError(f"{path}: expected a 2D image or a 3D stack, got shape {array.shape}.")
    array = np.ascontiguousarray(array)
    return Volume(
        source=str(path),
        format="monai",
        shape=array.shape,
        dtype=array.dtype,
        read=lambda index: array[index],
        spacing=spacing,
        files=[path],
        lazy=False,
    )
