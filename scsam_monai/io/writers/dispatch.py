"""Which writer writes which format (:func:`open_writer`), and which format an input's label map gets
(:func:`output_format_for`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scsam_monai.io.formats import OUTPUT_FORMATS
from scsam_monai.io.readers import Volume
from scsam_monai.io.writers.base import SliceWriter
from scsam_monai.io.writers.hdf5 import Hdf5Writer
from scsam_monai.io.writers.n5_zarr import TensorstoreWriter
from scsam_monai.io.writers.nifti import NiftiWriter
from scsam_monai.io.writers.png import PngSliceWriter
from scsam_monai.io.writers.tiff import TiffStackWriter

__all__ = ["open_writer", "output_format_for"]


def output_format_for(path: str | Path, volume: Volume, requested: str | None = None) -> str:
    """Format of the label map of ``path``: ``requested`` when given, else the input's own (NIfTI for MONAI-read
    formats, TIFF for per-slice stacks, PNG for 2D PNG/JPEG/BMP).

    Raises:
        ValueError: ``requested`` is not one of :data:`~scsam_monai.io.formats.OUTPUT_FORMATS`.
    """
    if requested:
        requested = requested.lower().replace("nii", "nifti").replace("niftifti", "nifti")
        if requested in ("tif", "ome-tiff"):
            requested = "tiff"
        if requested not in OUTPUT_FORMATS:
            raise ValueError(f"Unknown output format {requested!r}; choose one of {OUTPUT_FORMATS}.")
        return requested
    fmt = volume.format
    if fmt in ("tiff", "hdf5", "zarr", "n5"):
        return fmt
    if fmt == "png" or (fmt == "stack" and volume.shape[0] == 1):
        return "png"
    if fmt == "monai":
        return "nifti"
    return "tiff"


def open_writer(path: str | Path, fmt: str, shape: Sequence[int], dtype: np.dtype | str, volume: Volume) -> SliceWriter:
    """A writer of the ``(Z, Y, X)`` array ``shape`` at ``path`` in format ``fmt`` (one of
    :data:`~scsam_monai.io.formats.OUTPUT_FORMATS`), with the spacing of ``volume``; call
    ``write(index, plane)`` for every slice in order, then ``close()``.

    Raises:
        ValueError: ``fmt`` is not an output format.
    """
    path, dtype = Path(path), np.dtype(dtype)
    if fmt == "tiff":
        return TiffStackWriter(path, shape, dtype, volume)
    if fmt == "png":
        return PngSliceWriter(path, shape, dtype, volume)
    if fmt == "hdf5":
        return Hdf5Writer(path, shape, dtype, volume)
    if fmt in ("zarr", "n5"):
        return TensorstoreWriter(path, shape, dtype, volume, driver=fmt)
    if fmt == "nifti":
        return NiftiWriter(path, shape, dtype, volume)
    raise ValueError(f"Unknown output format {fmt!r}; choose one of {OUTPUT_FORMATS}.")
