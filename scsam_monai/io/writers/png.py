"""PNG through Pillow: one file for a 2D image, one file per slice (``<stem>_z<index>.png``) for a stack."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from scsam_monai.io.writers.base import SliceWriter, remove_path

__all__ = ["PngSliceWriter"]


class PngSliceWriter(SliceWriter):
    """Label maps as 8-bit PNGs; probabilities (float) as 8-bit greyscale 0..255. A stack's files are written into
    a hidden partial folder and moved beside each other on ``close()``. Arguments as :class:`~.base.SliceWriter`."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.shape[0] > 1:
            self.partial.mkdir()

    def _name(self, index: int) -> str:
        return f"{self.path.stem}_z{index:05d}.png"

    def _write(self, index: int, plane: np.ndarray) -> None:
        from PIL import Image

        if self.dtype.kind == "f":  # probabilities as 8-bit greyscale
            plane = np.clip(np.rint(plane * 255), 0, 255).astype(np.uint8)
        path = self.partial if self.shape[0] == 1 else self.partial / self._name(index)
        Image.fromarray(plane.astype(np.uint8, copy=False)).save(path, format="PNG")

    def _finish(self) -> None:
        """Nothing to finish: every slice was saved as its own complete file."""

    def _discard(self) -> None:
        """Nothing held open: the partial files are removed."""

    def _commit(self) -> None:
        if self.shape[0] == 1:
            os.replace(self.partial, self.path)
            return
        for index in range(self.shape[0]):
            os.replace(self.partial / self._name(index), self.path.with_name(self._name(index)))
        remove_path(self.partial)
