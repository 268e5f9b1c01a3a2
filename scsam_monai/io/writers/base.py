"""The :class:`SliceWriter` interface every format writer implements: slices in order, then an atomic finish.

A writer writes under a hidden temporary name beside its output (``.partial-<random>-<name>``, same suffix, so the
format libraries see the right extension) and renames it into place in :meth:`SliceWriter.close`, once every
slice is written and the file is complete. :meth:`SliceWriter.abort` (or a ``close()`` with slices missing)
removes the partial output instead: a failed or interrupted run never leaves a truncated label map under the
final name, and an older output at that name stays until a complete new one replaces it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scsam_monai.io.readers import Volume

__all__ = ["SliceWriter", "spacing_zyx", "remove_path"]


def spacing_zyx(volume: Volume) -> tuple[float, float, float]:
    """The voxel spacing ``(z, y, x)`` of ``volume``, 1.0 where the file gave none (the writers need numbers)."""
    spacing = volume.spacing or (None, None, None)
    return tuple(1.0 if s is None else float(s) for s in spacing)  # type: ignore[return-value]


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class SliceWriter(ABC):
    """Writes the slices of one ``(Z, Y, X)`` array in order; ``close()`` finishes the file and renames it into
    place, ``abort()`` removes it. Also a context manager: closed on success, aborted on an exception.

    Args:
        path: the output file or container (its parent folder is created).
        shape: ``(Z, Y, X)`` of the written array.
        dtype: dtype of the written voxels.
        volume: the input volume, whose spacing and unit the output keeps.
    """

    def __init__(self, path: Path, shape: Sequence[int], dtype: np.dtype, volume: Volume) -> None:
        self.path, self.shape, self.dtype, self.volume = Path(path), tuple(shape), np.dtype(dtype), volume
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".partial-{uuid.uuid4().hex[:8]}-{self.path.name}")
        self.written = 0
        self._open = True

    @abstractmethod
    def _write(self, index: int, plane: np.ndarray) -> None:
        """Write slice ``index`` into the partial output."""

    @abstractmethod
    def _finish(self) -> None:
        """Complete the partial output after the last slice (flush, close handles, write trailing metadata)."""

    @abstractmethod
    def _discard(self) -> None:
        """Release what the partial output holds open, without completing it (the file is removed after)."""

    def _commit(self) -> None:
        """Move the complete partial output to :attr:`path`, replacing what was there."""
        if self.path.is_dir() and self.partial.is_dir():
            remove_path(self.path)  # a container (folder) cannot be renamed over a non-empty folder
        os.replace(self.partial, self.path)

    def write(self, index: int, plane: np.ndarray) -> None:
        """Write slice ``index`` (``(Y, X)``); slices come in order, each once."""
        if not self._open:
            raise RuntimeError(f"{self.path}: the writer is closed.")
        self._write(index, plane)
        self.written += 1

    def close(self) -> None:
        """Finish the output and rename it into place.

        Raises:
            RuntimeError: fewer slices than ``shape[0]`` were written (the partial output is removed).
        """
        if not self._open:
            return
        if self.written < self.shape[0]:
            self.abort()
            raise RuntimeError(
                f"{self.path}: only {self.written} of {self.shape[0]} slices were written; the partial output was "
                "removed and nothing was written under this name."
            )
        try:
            self._finish()
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._open = False

    def abort(self) -> None:
        """Stop and remove the partial output (after a failure); :attr:`path` is left as it was."""
        if not self._open:
            return
        self._open = False
        try:
            self._discard()
        finally:
            remove_path(self.partial)

    def __enter__(self) -> SliceWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
