"""The :class:`Volume` every reader returns, the error every reader raises, and the checks of what is read.

A :class:`Volume` is a 2D image or 3D stack of shape ``(Z, Y, X)`` read slice by slice through a function its
reader supplies; any failure of that function becomes a :class:`DataPreparationError` naming the file.
:func:`check_memory` refuses a read that a corrupt or hostile header would make larger than the machine;
:func:`check_pixels` refuses pixels nothing downstream can use (empty, not numbers, NaN or infinite).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataPreparationError", "Volume", "natural_key", "check_memory", "check_pixels", "require_module", "Index"]

Index = tuple[Any, Any, Any]


class DataPreparationError(ValueError):
    """A source cannot be read or prepared; the message names the file and the problem."""


def natural_key(text: str | Path) -> list:
    """Sort key that orders embedded numbers by value: ``s2.png`` < ``s10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(nbytes: int, source: str, what: str = "reading it") -> None:
    """Refuse a read that would need more than half of this machine's memory.

    A corrupt or hostile header can declare an image of terabytes in a file of a few bytes; allocating it would
    kill the process (or the machine) instead of stopping with a message.

    Raises:
        DataPreparationError: naming ``source``, the size and the machine's memory.
    """
    total = _physical_memory()
    if total is not None and nbytes > total // 2:
        raise DataPreparationError(
            f"{source}: {what} needs {nbytes / 2**30:.1f} GiB, more than half of this machine's memory "
            f"({total / 2**30:.1f} GiB); the header is corrupt or the image is too large to read whole "
            "(read it slice by slice, or crop it)."
        )


def check_pixels(array: np.ndarray, source: str | Path) -> None:
    """Check that ``array`` holds usable pixels: a non-empty array of integers, booleans or finite floats.

    Args:
        array: the pixels.
        source: how the message names them (the file).

    Raises:
        DataPreparationError: the array is empty, of another dtype (complex, text, records), or holds NaN or
            infinite values; the message says how many and where the first one is.
    """
    if array.size == 0:
        raise DataPreparationError(f"{source}: the image is empty (shape {tuple(array.shape)}).")
    if array.dtype.kind not in "biuf":
        raise DataPreparationError(
            f"{source}: has pixels of dtype {array.dtype}; expected integer, boolean or floating-point pixels."
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataPreparationError(
                f"{source}: holds {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} infinite "
                f"values (the first at index {first}); replace them (e.g. with the background intensity) before "
                "training or inference."
            )


def require_module(module: str, purpose: str) -> Any:
    """Import the optional ``module`` a reader needs, or stop with a message saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DataPreparationError(f"reading {purpose} needs the '{module}' package: pip install {module}") from err


class Volume:
    """A 2D image or 3D stack, read slice by slice.

    Args:
        source: how messages name it (the path, with the dataset key when there is one).
        format: short format name (``tiff``, ``png``, ``stack``, ``hdf5``, ``n5``, ``zarr``, ``monai``).
        shape: ``(Z, Y, X)``.
        dtype: numpy dtype of the voxels.
        read: function returning the voxels at a ``(z, y, x)`` index of ints and slices.
        spacing: voxel size ``(z, y, x)``; components the file does not give are None.
        unit: unit of the spacing as the file names it.
        files: the files that hold the data (for checksums); empty for containers and URLs.
        lazy: whether a slice is read without reading the whole volume (along z; along y and x as well for
            chunked formats and memory-mapped TIFF).
        close: releases open file handles.
    """

    def __init__(
        self,
        *,
        source: str,
        format: str,
        shape: Sequence[int],
        dtype: np.dtype | str,
        read: Callable[[Index], np.ndarray],
        spacing: Sequence[float | None] | None = None,
        unit: str | None = None,
        files: Sequence[Path] = (),
        lazy: bool = True,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.format = format
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.spacing = None if spacing is None else tuple(None if s is None else float(s) for s in spacing)
        self.unit = unit
        self.files = [Path(f) for f in files]
        self.lazy = lazy
        self.notes: list[str] = []
        self._read = read
        self._close = close

    def __repr__(self) -> str:
        return f"Volume({self.source!r}, format={self.format}, shape={self.shape}, dtype={self.dtype})"

    def num_slices(self, axis: int = 0) -> int:
        """Number of slices along ``axis`` (0 = z, 1 = y, 2 = x)."""
        return self.shape[axis]

    def read_slice(self, index: int, axis: int = 0) -> np.ndarray:
        """Read slice ``index`` along ``axis`` as a 2D array (``(Y, X)`` for z, ``(Z, X)`` for y, ``(Z, Y)`` for x)."""
        if axis not in (0, 1, 2):
            raise DataPreparationError(f"{self.source}: axis must be 0, 1 or 2, got {axis}.")
        if not 0 <= index < self.shape[axis]:
            raise DataPreparationError(
                f"{self.source}: slice {index} is outside 0..{self.shape[axis] - 1} along axis {'zyx'[axis]}."
            )
        idx: list[Any] = [slice(None)] * 3
        idx[axis] = int(index)
        plane = [s for i, s in enumerate(self.shape) if i != axis]
        check_memory(plane[0] * plane[1] * self.dtype.itemsize, self.source, f"a slice of {plane[0]} x {plane[1]}")
        array = self._guarded(tuple(idx))
        expected = tuple(s for i, s in enumerate(self.shape) if i != axis)
        if array.shape != expected:
            raise DataPreparationError(f"{self.source}: slice {index} has shape {array.shape}, expected {expected}.")
        return array

    def read(self) -> np.ndarray:
        """Read the whole volume ``(Z, Y, X)``."""
        check_memory(int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize, self.source, "reading it whole")
        array = self._guarded((slice(None), slice(None), slice(None)))
        if array.size != int(np.prod(self.shape, dtype=np.int64)):
            raise DataPreparationError(
                f"{self.source}: holds {array.size} voxels, but its header declares shape {self.shape}; "
                "the file is truncated or corrupt."
            )
        return array.reshape(self.shape)

    def _guarded(self, index: Index) -> np.ndarray:
        try:
            return np.asarray(self._read(index))
        except DataPreparationError:
            raise
        except Exception as err:  # noqa: BLE001 - any reader failure becomes one message naming the file
            raise DataPreparationError(
                f"{self.source}: cannot read voxels; the file is truncated or corrupt ({type(err).__name__}: {err})."
            ) from err

    def describe(self) -> dict[str, Any]:
        """Facts for a manifest: source, format, shape, dtype, spacing, unit."""
        return {
            "source": self.source,
            "format": self.format,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "spacing_zyx": None if self.spacing is None else list(self.spacing),
            "unit": self.unit,
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    def close(self) -> None:
        """Release open file handles."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
