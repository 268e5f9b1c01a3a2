"""The file-name suffixes and URL schemes that decide which reader opens a path."""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
"""Suffixes of the per-slice files picked up from a folder."""

_TIFF = (".tif", ".tiff")
_PIL = (".png", ".jpg", ".jpeg", ".bmp")
_HDF5 = (".h5", ".hdf5", ".hdf", ".he5")
_URL = re.compile(r"^(s3|gs|https?|file)://", re.IGNORECASE)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
