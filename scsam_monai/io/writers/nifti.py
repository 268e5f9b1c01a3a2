"""NIfTI through nibabel, in bounded memory: slices go to a memory-mapped array on disk, written out at the end."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from scsam_monai.io.writers.base import SliceWriter, spacing_zyx

__all__ = ["NiftiWriter"]


class NiftiWriter(SliceWriter):
    """Slices go to a memory-mapped ``.npy`` next to the output; nibabel writes it out on ``close()``. Arguments
    as :class:`~.base.SliceWriter`."""

    _array: np.memmap | None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        fd, name = tempfile.mkstemp(prefix=".partial-", suffix=".npy", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(name)
        self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=self.dtype, shape=self.shape)

    def _write(self, index: int, plane: np.ndarray) -> None:
        self._array[index] = plane

    def _finish(self) -> None:
        import nibabel as nib

        try:
            self._array.flush()
            z, y, x = spacing_zyx(self.volume)
            # NIfTI stores (x, y, z): the transposed view of the memory map, written by nibabel in slabs
            image = nib.Nifti1Image(self._array.T, np.diag([x, y, z, 1.0]))
            image.header.set_zooms((x, y, z))
            nib.save(image, self.partial)  # the partial name keeps the suffix (.nii / .nii.gz) nibabel reads
        finally:
            self._discard()

    def _discard(self) -> None:
        self._array = None
        self._tmp.unlink(missing_ok=True)
