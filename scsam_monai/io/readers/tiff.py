"""TIFF, OME-TIFF and ImageJ TIFF through tifffile.

A multi-page stack is read one page per slice; an uncompressed contiguous file is memory-mapped, so slices
along any axis are read lazily. A whole z slice of such a file is read with one positioned read (``os.preadv``)
into a fresh array instead of through the map: streaming a volume then leaves no mapped pages behind, so the
process's resident memory does not grow with the number of slices read. Reads are safe from several threads
(positioned reads, and tifffile's file lock for page reads). Voxel spacing comes from the OME-XML or the ImageJ
metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from scsam_monai.io.readers.dims import cached_whole, plan_dims
from scsam_monai.io.readers.volume import DataPreparationError, Index, Volume

__all__ = ["open_tiff"]


def _tiff_spacing(tif: Any) -> tuple[tuple | None, str | None]:
    try:
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
            if pixels is not None:
                sizes = [pixels.get(f"PhysicalSize{a}") for a in "ZYX"]
                if any(s is not None for s in sizes):
                    unit = pixels.get("PhysicalSizeXUnit", "µm")
                    return tuple(None if s is None else float(s) for s in sizes), unit
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
            tags = tif.pages[0].tags
            xy = []
            for name in ("YResolution", "XResolution"):
                tag = tags.get(name)
                num, den = tag.value if tag is not None else (0, 1)
                xy.append(den / num if num else None)
            z = meta.get("spacing")
            unit = meta.get("unit")
            unit = "µm" if unit in ("micron", "um", "\\u00B5m") else unit
            if z is not None or any(v is not None and v != 1.0 for v in xy):
                return (None if z is None else float(z), xy[0], xy[1]), unit
    except Exception:  # noqa: BLE001 - spacing is optional metadata; a malformed tag must not stop reading
        return None, None
    return None, None


def _mapped_reader(path: Path, memmap: np.memmap) -> Any:
    """Reads of a memory-mapped ``(Z, Y, X)`` array: whole z slices by ``os.preadv`` (no pages stay mapped), the rest
    through the map."""
    fd = os.open(path, os.O_RDONLY) if hasattr(os, "preadv") and memmap.flags.c_contiguous else None

    def read(index: Index) -> np.ndarray:
        z, y, x = index
        if fd is None or not isinstance(z, int) or y != slice(None) or x != slice(None):
            return np.array(memmap[index])
        array = np.empty(memmap.shape[1:], dtype=memmap.dtype)
        nbytes = array.nbytes
        done = os.preadv(fd, [memoryview(array.reshape(-1).view(np.uint8))], int(memmap.offset) + int(z) * nbytes)
        if done != nbytes:
            raise OSError(f"slice {z}: read {done} of {nbytes} bytes (the file is truncated)")
        return array

    read.close = (lambda: os.close(fd)) if fd is not None else (lambda: None)  # type: ignore[attr-defined]
    return read


def open_tiff(path: Path) -> Volume:
    """The first series of a TIFF file as a volume: memory-mapped when it can be, else read page by page."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        shape, axes, dtype = tuple(series.shape), str(series.axes), np.dtype(series.dtype)
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as a TIFF file ({type(err).__name__}: {err}).") from err
    try:
        plan, shape3 = plan_dims(shape, str(path), list(axes))
        pages = series.pages
        spacing, unit = _tiff_spacing(tif)
        planes = int(np.prod(shape[:-2], dtype=np.int64))
        per_page = len(pages) == planes and planes == shape3[0] and all(p is not None for p in pages)
        memmap = None
        if series.dataoffset is not None and planes == shape3[0]:
            try:
                memmap = tifffile.memmap(path, series=0, mode="r").reshape(shape3)
            except Exception:  # noqa: BLE001 - not memory-mappable after all: fall back to page reads
                memmap = None
    except DataPreparationError:
        tif.close()
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt page or tag deeper in the file
        tif.close()
        raise DataPreparationError(f"{path}: is a corrupt TIFF file ({type(err).__name__}: {err}).") from err
    except BaseException:
        tif.close()
        raise
    tif.filehandle.set_lock(True)  # page reads seek then read: serialise them across threads
    if memmap is not None:
        read = _mapped_reader(path, memmap)
    else:
        whole = cached_whole(lambda: np.asarray(series.asarray()).reshape(shape3))

        def read(index: Index) -> np.ndarray:
            z, y, x = index
            if per_page and isinstance(z, int):
                return np.asarray(pages[z].asarray()).reshape(shape3[1:])[y, x]
            return whole(index)

    return Volume(
        source=str(path),
        format="tiff",
        shape=shape3,
        dtype=dtype,
        read=read,
        spacing=spacing,
        unit=unit,
        files=[path],
        lazy=memmap is not None or per_page,
        close=_closer(tif, read),
    )


def _closer(tif: Any, read: Any) -> Any:
    def close() -> None:
        getattr(read, "close", lambda: None)()
        tif.close()

    return close
