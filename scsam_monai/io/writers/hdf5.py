"""HDF5 datasets through h5py: gzip-compressed, one slice per chunk, spacing in ``element_size_um``."""

from __future__ import annotations

from typing import Any

import numpy as np

from scsam_monai.io.writers.base import SliceWriter, spacing_zyx

__all__ = ["Hdf5Writer"]


class Hdf5Writer(SliceWriter):
    """Writes dataset ``key`` of a new HDF5 file. Other arguments as :class:`~.base.SliceWriter`.

    Args:
        key: name of the dataset.
    """

    def __init__(self, *args: Any, key: str = "label") -> None:
        import h5py

        super().__init__(*args)
        self._file = h5py.File(self.partial, "w")
        chunks = (1, *self.shape[1:])
        self._data = self._file.create_dataset(
            key, shape=self.shape, dtype=self.dtype, chunks=chunks, compression="gzip"
        )
        self._data.attrs["element_size_um"] = list(spacing_zyx(self.volume))
        if self.volume.unit:
            self._data.attrs["unit"] = self.volume.unit

    def _write(self, index: int, plane: np.ndarray) -> None:
        self._data[index] = plane

    def _finish(self) -> None:
        self._file.close()

    def _discard(self) -> None:
        self._file.close()
