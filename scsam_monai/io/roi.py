"""A region of interest of a volume (``--roi z0:z1,y0:y1,x0:x1``): try a model on part of a huge input.

:func:`parse_roi` reads the command-line text; :func:`crop_volume` gives a lazy view of the region, read through
the original volume's reader (an N5 or OME-Zarr input reads only the chunks the region touches).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scsam_monai.io.readers import DataPreparationError, Volume

__all__ = ["Roi", "crop_volume", "parse_roi"]

Roi = tuple[slice, slice, slice]
"""Start and stop (steps of 1) along z, y and x; None for an open end."""


def _bound(text: str, axis: str, whole: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--roi {whole!r}: {axis} bound {text!r} is not an integer.") from None
    if value < 0:
        raise ValueError(f"--roi {whole!r}: {axis} bound {value} is negative (bounds count from 0).")
    return value


def parse_roi(text: str | Sequence[Any] | None) -> Roi | None:
    """``"z0:z1,y0:y1,x0:x1"`` (or ``"y0:y1,x0:x1"`` for a 2D image; an empty bound is open) as slices.

    A list of three ``[start, stop]`` pairs (a config's form) is accepted too.

    Raises:
        ValueError: a malformed region, naming what is wrong.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str):
        whole = text
        parts = [p.split(":") for p in text.split(",")]
        if any(len(p) != 2 for p in parts):
            raise ValueError(f"--roi {whole!r}: write each axis as start:stop, e.g. 100:200,0:4096,0:4096.")
    else:
        whole = str(list(text))
        parts = [["" if v is None else str(v) for v in p] for p in text]
        if any(len(p) != 2 for p in parts):
            raise ValueError(f"--roi {whole}: give [start, stop] for each axis.")
    if len(parts) == 2:
        parts = [["", ""], *parts]
    if len(parts) != 3:
        raise ValueError(f"--roi {whole!r}: give z0:z1,y0:y1,x0:x1 (or y0:y1,x0:x1), got {len(parts)} axes.")
    region = []
    for axis, (start, stop) in zip("zyx", parts, strict=True):
        a, b = _bound(start, axis, whole), _bound(stop, axis, whole)
        if a is not None and b is not None and b <= a:
            raise ValueError(f"--roi {whole!r}: the {axis} range {a}:{b} is empty.")
        region.append(slice(a, b))
    return tuple(region)  # type: ignore[return-value]


def crop_volume(volume: Volume, roi: Roi) -> tuple[Volume, tuple[int, int, int]]:
    """A lazy view of ``volume`` inside ``roi``, and the region's start ``(z, y, x)`` in the volume.

    The view keeps the spacing and unit; its ``source`` names the region. Closing the view does not close
    ``volume``.

    Raises:
        DataPreparationError: the region lies outside the volume (naming both).
    """
    starts, stops = [], []
    for axis, size, part in zip("zyx", volume.shape, roi, strict=True):
        start = 0 if part.start is None else part.start
        stop = size if part.stop is None else part.stop
        if start >= size or stop > size:
            raise DataPreparationError(
                f"{volume.source}: --roi {axis} range {start}:{stop} is outside its {size} pixels along {axis} "
                f"(shape z, y, x = {volume.shape})."
            )
        starts.append(start)
        stops.append(stop)
    shape = tuple(b - a for a, b in zip(starts, stops, strict=True))

    def read(index: tuple) -> Any:
        shifted = []
        for part, start, size in zip(index, starts, shape, strict=True):
            if isinstance(part, slice):
                lo, hi, _ = part.indices(size)
                shifted.append(slice(start + lo, start + hi))
            else:
                shifted.append(start + int(part))
        return volume._guarded(tuple(shifted))

    region = ",".join(f"{a}:{b}" for a, b in zip(starts, stops, strict=True))
    view = Volume(
        source=f"{volume.source}[{region}]",
        format=volume.format,
        shape=shape,
        dtype=volume.dtype,
        read=read,
        spacing=volume.spacing,
        unit=volume.unit,
        files=volume.files,
        lazy=volume.lazy,
    )
    return view, (starts[0], starts[1], starts[2])
