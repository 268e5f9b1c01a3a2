"""HDF5 through h5py: one dataset of a file (named by a key, or the only one), read chunk by chunk.

Voxel spacing comes from the dataset's (or else the file's) ``element_size_um``, ``resolution``, ``spacing``
or ``pixel_size`` attribute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scsam_monai.io.readers.dims import mapped_reader, plan_dims
from scsam_monai.io.readers.volume import DataPreparationError, Volume, require_module

__all__ = ["open_hdf5"]


def _spacing_from_attrs(attrs: Any) -> tuple[tuple | None, str | None]:
    try:
        return _spacing_from_attrs_or_fail(attrs)
    except Exception:  # noqa: BLE001 - spacing is optional metadata; a malformed attribute must not stop reading
        return None, None


def _spacing_from_attrs_or_fail(attrs: Any) -> tuple[tuple | None, str | None]:
    for name, unit in (("element_size_um", "µm"), ("resolution", None), ("spacing", None), ("pixel_size", None)):
        if name in attrs:
            values = np.atleast_1d(np.asarray(attrs[name], dtype=float)).tolist()
            unit = unit or attrs.get("unit") or attrs.get("units")
            if isinstance(unit, bytes):
                unit = unit.decode()
            if not isinstance(unit, str):
                unit = None
            values = [None] * (3 - len(values)) + values[-3:]
            return tuple(values), unit
    return None, None


def open_hdf5(path: Path, key: str | None) -> Volume:
    """Open dataset ``key`` of the HDF5 file ``path`` (the only dataset when ``key`` is None) as a volume."""
    h5py = require_module("h5py", "HDF5")
    try:
        handle = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an HDF5 file ({type(err).__name__}: {err}).") from err
    try:
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        listing = ", ".join(names[:20]) or "none"
        if key is None:
            if len(names) != 1:
                raise DataPreparationError(
                    f"{path}: holds {len(names)} datasets ({listing}); name one with a dataset key."
                )
            key = names[0]
        node = handle.get(key.strip("/"))
        if not isinstance(node, h5py.Dataset):
            raise DataPreparationError(f"{path}: has no dataset '{key}' (datasets in the file: {listing}).")
        source = f"{path} [{key}]"
        plan, shape3 = plan_dims(node.shape, source)
        spacing, unit = _spacing_from_attrs(node.attrs)
        if spacing is None:
            spacing, unit = _spacing_from_attrs(handle.attrs)
        dtype = np.dtype(node.dtype)
    except DataPreparationError:
        handle.close()
        raise
    except Exception as err:  # noqa: BLE001 - HDF5 raises RuntimeError/KeyError/OSError for corrupt structures
        handle.close()
        raise DataPreparationError(f"{path}: is a corrupt HDF5 file ({type(err).__name__}: {err}).") from err
    except BaseException:
        handle.close()
        raise
    return Volume(
        source=source,
        format="hdf5",
        shape=shape3,
        dtype=dtype,
        read=mapped_reader(lambda i: node[i], plan),
        spacing=spacing,
        unit=unit,
        files=[path],
        close=handle.close,
    )
