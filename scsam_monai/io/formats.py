"""The one table of file formats: which suffixes, container markers and URL schemes name which format.

The readers (:mod:`scsam_monai.io.readers`) use it to pick the reader of a path, the writers
(:mod:`scsam_monai.io.writers`) to name and choose their outputs, and volume inference to list what a folder
holds to segment; keeping it in one place means a format added here is read, listed and written alike.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "TIFF_SUFFIXES",
    "PILLOW_SUFFIXES",
    "IMAGE_SUFFIXES",
    "HDF5_SUFFIXES",
    "NIFTI_SUFFIXES",
    "MONAI_SUFFIXES",
    "VOLUME_SUFFIXES",
    "ZARR_MARKERS",
    "N5_MARKERS",
    "URL_PATTERN",
    "OUTPUT_FORMATS",
    "OUTPUT_SUFFIXES",
    "file_suffix",
    "file_stem",
    "is_zarr",
    "is_n5",
    "is_container",
]

TIFF_SUFFIXES = (".tif", ".tiff")
"""TIFF, OME-TIFF and ImageJ TIFF (tifffile)."""
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
"""2D images read by Pillow."""
IMAGE_SUFFIXES = TIFF_SUFFIXES + PILLOW_SUFFIXES
"""Suffixes of the per-slice files picked up from a folder."""
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
"""HDF5 files (h5py); the only files that take a dataset key."""
NIFTI_SUFFIXES = (".nii", ".nii.gz")
"""NIfTI (MONAI's ``NibabelReader``)."""
MONAI_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".mhd", ".nrrd")
"""Formats read whole through MONAI's readers (NIfTI by nibabel, the others by ITK)."""
VOLUME_SUFFIXES = HDF5_SUFFIXES + MONAI_SUFFIXES
"""One-file volumes besides TIFF stacks."""
ZARR_MARKERS = (".zarray", ".zgroup", ".zattrs", "zarr.json")
"""Files that make a folder a Zarr v2 / v3 container."""
N5_MARKERS = ("attributes.json",)
"""Files that make a folder an N5 container."""
URL_PATTERN = re.compile(r"^(s3|gs|https?|file)://", re.IGNORECASE)
"""URLs of remote N5 and Zarr containers (read by tensorstore)."""

OUTPUT_FORMATS = ("tiff", "hdf5", "zarr", "n5", "png", "nifti")
"""Formats label and probability maps can be written in."""
OUTPUT_SUFFIXES = {"tiff": ".tif", "hdf5": ".h5", "zarr": ".zarr", "n5": ".n5", "png": ".png", "nifti": ".nii.gz"}
"""The suffix of a written file or container, per output format."""


def file_suffix(path: str | Path) -> str:
    """Lower-case suffix of ``path``, with ``.nii.gz`` as one suffix."""
    path = Path(path)
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_stem(path: str | Path) -> str:
    """Name of ``path`` without its suffix (``.nii.gz`` counted as one; a trailing slash ignored)."""
    name = Path(str(path).rstrip("/")).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def is_zarr(path: Path) -> bool:
    """Whether the folder ``path`` is a Zarr container (by its suffix or its metadata files)."""
    return path.suffix.lower() == ".zarr" or any((path / m).is_file() for m in ZARR_MARKERS)


def is_n5(path: Path) -> bool:
    """Whether the folder ``path`` is an N5 container (by its suffix or its ``attributes.json``)."""
    return path.suffix.lower() == ".n5" or any((path / m).is_file() for m in N5_MARKERS)


def is_container(path: Path) -> bool:
    """Whether the folder ``path`` is an N5 or Zarr container (opened as one array, not as per-slice files)."""
    return is_zarr(path) or is_n5(path)
