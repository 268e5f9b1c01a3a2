"""TIFF, OME-TIFF and ImageJ TIFF through tifffile.

A multi-page stack is read one page per slice; an uncompressed contiguous file is memory-mapped, so slices
along any axis are read lazily. Voxel spacing comes from the OME-XML or the ImageJ metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dims import _cached_whole, _plan_dims
from .volume import DataPreparationError, Index, Volume


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


def _open_tiff(path: Path) -> Volume:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        shape, axes, dtype = tuple(series.shape), str(series.axes), np.dtype(series.dtype)
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as a TIFF file ({type(err).__name__}: {err}).") from err
    try:
        plan, shape3 = _plan_dims(shape, str(path), list(axes))
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
    if memmap is not None:
        read = lambda index: np.array(memmap[index])  # noqa: E731
    else:
        whole = _cached_whole(lambda: np.asarray(series.asarray()).reshape(shape3))

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
        close=tif.close,
    )
