"""Readers of 2D images and 3D stacks: one :class:`Volume` interface over the formats EM data come in.

Every source opens as a volume of shape ``(Z, Y, X)``; a 2D image is a stack of one slice. Formats:

- TIFF / OME-TIFF / ImageJ TIFF (tifffile): a multi-page stack is read one page per slice; uncompressed
  contiguous files are memory-mapped, so slices along any axis are read lazily.
- PNG, JPEG, BMP (Pillow): 1-bit images read as ``bool``, palette images as their indices.
- a folder of per-slice files, or a glob (``raw/*.tif``): sorted naturally (``2.png`` before ``10.png``);
  each slice is read from its own file when it is needed.
- HDF5 (h5py, with a dataset key), N5 and Zarr v2/v3 / OME-Zarr (tensorstore, also from ``s3://``, ``gs://``
  or ``https://`` URLs): chunked, so any slice is read without loading the whole volume.
- NIfTI, MHA/MHD, NRRD (MONAI's ``NibabelReader`` and ``ITKReader``, the readers of ``LoadImage``): read whole.

Orientation: ``(Z, Y, X)`` with X the fastest-varying axis, the order in which TIFF, PNG, HDF5 and Zarr store
data. N5 lists its dimensions fastest first (x, y, z) and is reversed; MONAI returns NIfTI/MHA/NRRD as
(x, y, z) and is transposed, so a 2D image is ``(H, W)`` as the file shows it. Voxel spacing is kept in the
same ``(z, y, x)`` order where the format has it (OME and ImageJ TIFF, HDF5 ``element_size_um``, N5
``pixelResolution`` / ``resolution`` / ``transform``, OME-Zarr scales, NIfTI/ITK headers); a component the
file does not give is ``None``.

Every failure raises :class:`DataPreparationError` with a message that names the file and the problem: a missing,
truncated or corrupt file, malformed metadata, a shape that is not one single-channel 2D image or 3D stack, or a
read that would need more memory than the machine has (a corrupt or hostile header declaring a huge image). No
other exception leaves :func:`open_volume` or a :class:`Volume`'s reads (``tests/test_fuzz.py`` checks this with
random bytes and random arrays).
"""

from __future__ import annotations

import glob as _glob
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataPreparationError", "Volume", "open_volume", "natural_key", "check_memory", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
"""Suffixes of the per-slice files picked up from a folder."""

_TIFF = (".tif", ".tiff")
_PIL = (".png", ".jpg", ".jpeg", ".bmp")
_HDF5 = (".h5", ".hdf5", ".hdf", ".he5")
_URL = re.compile(r"^(s3|gs|https?|file)://", re.IGNORECASE)
_PIL_DTYPES = {
    "1": "bool",
    "L": "uint8",
    "P": "uint8",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I": "int32",
    "F": "float32",
}

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


def _require(module: str, purpose: str) -> Any:
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


# ---- dimension handling -----------------------------------------------------------------------------------


def _plan_dims(shape: Sequence[int], source: str, names: Sequence[str] | None = None) -> tuple[list, tuple]:
    """Map a source shape onto ``(Z, Y, X)``: Y and X are the last two dims (after a trailing singleton channel
    or sample axis), and every other singleton dim is dropped.

    Returns ``(plan, shape3)``; ``plan`` has, per source dim, ``0`` (dropped) or ``"z"``/``"y"``/``"x"``.
    """
    full = tuple(int(s) for s in shape)
    names = [n.lower() for n in names] if names is not None else [""] * len(full)
    shape, trailing = full, 0
    while len(shape) > 2 and names[len(shape) - 1] in ("s", "c"):  # trailing samples (RGB) or channel axis
        if shape[-1] != 1:
            raise DataPreparationError(
                f"{source}: has {shape[-1]} channels (shape {full}); EM data must be single-channel."
            )
        shape, trailing = shape[:-1], trailing + 1
    if len(shape) < 2:
        raise DataPreparationError(f"{source}: expected a 2D image or a 3D stack, got shape {full}.")
    lead = [i for i in range(len(shape) - 2) if shape[i] != 1]
    for i in lead:
        if names[i] in ("c", "s", "channel"):
            hint = " (a 3- or 4-slice stack saved as planar RGB? save it with photometric='minisblack')"
            raise DataPreparationError(
                f"{source}: has {shape[i]} channels (shape {full}); EM data must be single-channel"
                + (hint if names[i] == "s" else "")
                + "."
            )
    if len(lead) > 1:
        raise DataPreparationError(
            f"{source}: has {len(lead)} non-singleton dimensions besides Y and X (shape {full}); "
            "expected one 2D image or one 3D stack."
        )
    plan: list = [0] * (len(shape) - 2) + ["y", "x"] + [0] * trailing
    if lead:
        plan[lead[0]] = "z"
    return plan, (shape[lead[0]] if lead else 1, shape[-2], shape[-1])


def _mapped_reader(get: Callable[[tuple], np.ndarray], plan: list) -> Callable[[Index], np.ndarray]:
    """Read ``(z, y, x)`` indices from a source whose dims follow ``plan``."""
    has_z = "z" in plan

    def read(index: Index) -> np.ndarray:
        z, y, x = index
        full = tuple({"z": z, "y": y, "x": x}.get(p, 0) if isinstance(p, str) else 0 for p in plan)
        if not has_z:
            if isinstance(z, slice):
                return np.asarray(get(full))[None][z]
            if z != 0:
                raise IndexError(f"slice {z} of a 2D image")
        return np.asarray(get(full))

    return read


def _cached_whole(load: Callable[[], np.ndarray]) -> Callable[[Index], np.ndarray]:
    cache: dict[str, np.ndarray] = {}

    def read(index: Index) -> np.ndarray:
        if "a" not in cache:
            cache["a"] = load()
        return cache["a"][index]

    return read


# ---- TIFF and Pillow images -------------------------------------------------------------------------------


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


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "1":  # Pillow exposes 1-bit pixels as bool bytes of 0/255: make them canonical
                return np.asarray(image).view(np.uint8) != 0
            if mode in ("L", "P", "I", "F") or mode.startswith("I;16"):
                return np.asarray(image)
            if mode in ("LA", "PA"):
                return np.asarray(image.getchannel(0))
            rgb = np.asarray(image.convert("RGB"))
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataPreparationError(f"{path}: is a colour image ({mode}); EM data must be single-channel greyscale.")
    return rgb[..., 0]


def _pil_header(path: Path) -> tuple[tuple[int, int], np.dtype]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            return (height, width), np.dtype(_PIL_DTYPES.get(image.mode, "uint8"))
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err


def _open_pil(path: Path) -> Volume:
    (h, w), dtype = _pil_header(path)
    read = _cached_whole(lambda: _read_pil(path)[None])
    return Volume(
        source=str(path), format=path.suffix.lower().lstrip("."), shape=(1, h, w), dtype=dtype, read=read, files=[path]
    )


def _slice_header(path: Path) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype of a per-slice file, from its header where the format allows."""
    if path.suffix.lower() in _PIL:
        return _pil_header(path)
    with _open_file(path, None) as volume:
        if volume.shape[0] != 1:
            raise DataPreparationError(f"{path}: a per-slice file must hold one 2D image, got shape {volume.shape}.")
        return volume.shape[1:], volume.dtype


def _read_slice_file(path: Path) -> np.ndarray:
    if path.suffix.lower() in _PIL:
        return _read_pil(path)
    with _open_file(path, None) as volume:
        return volume.read_slice(0)


def _max_value(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0


def _open_stack(files: Sequence[Path], source: str) -> Volume:
    """Per-slice files as one volume. Slices may differ in encoding (1-bit and 8-bit masks in one folder): the
    volume takes the widest dtype, and 1-bit slices in a non-1-bit stack are read as 0 / the dtype's maximum
    (0/255 for 8 bit), as a viewer shows them."""
    if not files:
        raise DataPreparationError(f"{source}: no image file found ({', '.join(IMAGE_SUFFIXES)}).")
    headers = [_slice_header(f) for f in files]
    shape2 = headers[0][0]
    for f, (other, _) in zip(files, headers, strict=True):
        if other != shape2:
            raise DataPreparationError(f"{f}: slice shape {other} differs from {files[0]} {shape2} in {source}.")
    wide = [d for _, d in headers if d.kind != "b"]
    dtype = np.result_type(*wide) if wide else np.dtype(bool)
    notes = []
    if wide and len(wide) < len(headers):
        notes.append(
            f"{len(headers) - len(wide)} of {len(headers)} slices are 1-bit and are read as 0/{_max_value(dtype):g}"
        )

    def read_one(i: int) -> np.ndarray:
        array = _read_slice_file(files[i])
        if array.shape != shape2:
            raise DataPreparationError(f"{files[i]}: slice shape {array.shape} differs from {shape2}.")
        if array.dtype.kind == "b" and dtype.kind != "b":
            return np.where(array, _max_value(dtype), 0).astype(dtype)
        return array.astype(dtype, copy=False)

    whole = _cached_whole(lambda: np.stack([read_one(i) for i in range(len(files))]))

    def read(index: Index) -> np.ndarray:
        z, y, x = index
        return read_one(z)[y, x] if isinstance(z, int) else whole(index)

    volume = Volume(source=source, format="stack", shape=(len(files), *shape2), dtype=dtype, read=read, files=files)
    volume.notes = notes
    return volume


# ---- HDF5 -------------------------------------------------------------------------------------------------


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


def _open_hdf5(path: Path, key: str | None) -> Volume:
    h5py = _require("h5py", "HDF5")
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
        plan, shape3 = _plan_dims(node.shape, source)
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
        read=_mapped_reader(lambda i: node[i], plan),
        spacing=spacing,
        unit=unit,
        files=[path],
        close=handle.close,
    )


# ---- N5 and Zarr (tensorstore) ----------------------------------------------------------------------------


def _join(base: str, key: str) -> str:
    key = key.strip("/")
    return f"{base.rstrip('/')}/{key}" if key else base.rstrip("/")


def _kvstore(location: str) -> Any:
    """tensorstore kvstore spec of a local folder or a URL (trailing slash: a directory)."""
    if _URL.match(location):
        return location.rstrip("/") + "/"
    return {"driver": "file", "path": os.path.abspath(location) + "/"}


def _read_json(location: str, name: str) -> dict | None:
    if not _URL.match(location):
        path = Path(location) / name
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as err:
            raise DataPreparationError(f"{path}: is not valid JSON ({err}).") from err
        if not isinstance(value, dict):
            raise DataPreparationError(f"{path}: expected a JSON object, got {type(value).__name__}.")
        return value
    ts = _require("tensorstore", "N5 and Zarr")
    try:
        result = ts.KvStore.open(_kvstore(location)).result().read(name).result()
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{location}: cannot be reached ({type(err).__name__}: {err}).") from err
    if result.state != "value":
        return None
    try:
        value = json.loads(result.value)
    except (ValueError, RecursionError) as err:
        raise DataPreparationError(f"{location}/{name}: is not valid JSON ({err}).") from err
    if not isinstance(value, dict):
        raise DataPreparationError(f"{location}/{name}: expected a JSON object, got {type(value).__name__}.")
    return value


def _children(location: str, marker: str) -> list[str]:
    if _URL.match(location) or not Path(location).is_dir():
        return []
    found = []
    for root, _, files in os.walk(location):
        if marker in files and os.path.abspath(root) != os.path.abspath(location):
            found.append(os.path.relpath(root, location))
    return sorted(found, key=natural_key)[:20]


def _ts_open(driver: str, location: str, source: str) -> Any:
    ts = _require("tensorstore", "N5 and Zarr")
    try:
        return ts.open({"driver": driver, "kvstore": _kvstore(location)}, read=True).result()
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{source}: cannot be opened as {driver} ({type(err).__name__}: {err}).") from err


def _n5_spacing(attrs: dict, parent: dict | None, name: str) -> tuple[tuple | None, str | None]:
    try:
        return _n5_spacing_or_fail(attrs, parent, name)
    except Exception:  # noqa: BLE001 - spacing is optional metadata; a malformed attribute must not stop reading
        return None, None


def _n5_spacing_or_fail(attrs: dict, parent: dict | None, name: str) -> tuple[tuple | None, str | None]:
    if isinstance(attrs.get("pixelResolution"), dict):
        res = attrs["pixelResolution"]
        return tuple(reversed([float(v) for v in res.get("dimensions", [])])), res.get("unit")
    if isinstance(attrs.get("resolution"), list):
        return tuple(reversed([float(v) for v in attrs["resolution"]])), attrs.get("unit") or attrs.get("units")
    transform = attrs.get("transform")
    if transform is None and parent:
        for ms in parent.get("multiscales", []) or []:
            for ds in ms.get("datasets", []):
                if ds.get("path") == name:
                    transform = ds.get("transform")
    if isinstance(transform, dict) and "scale" in transform:
        scale = [float(v) for v in transform["scale"]]
        units = transform.get("units") or [None]
        if transform.get("ordering", "C") == "F":
            scale = scale[::-1]
        return tuple(scale), units[0]
    return None, None


def _open_n5(location: str, key: str | None) -> Volume:
    key = (key or "").strip("/")
    array_at = _join(location, key)
    source = f"{location} [{key}]" if key else location
    attrs = _read_json(array_at, "attributes.json")
    if attrs is None:
        raise DataPreparationError(f"{source}: no N5 array or group here (attributes.json is missing).")
    if "dimensions" not in attrs:
        scale0 = _read_json(_join(array_at, "s0"), "attributes.json")
        if scale0 is not None and "dimensions" in scale0:
            key, array_at, attrs = _join(key, "s0").strip("/"), _join(array_at, "s0"), scale0
            source = f"{location} [{key}]"
        else:
            arrays = ", ".join(_children(array_at, "attributes.json")) or "see the container"
            raise DataPreparationError(
                f"{source}: is an N5 group, not an array; name an array with the dataset key ({arrays})."
            )
    parent_key, _, name = key.rpartition("/")
    parent = _read_json(_join(location, parent_key), "attributes.json") if key else None
    spacing, unit = _n5_spacing(attrs, parent, name)
    store = _ts_open("n5", array_at, source).T  # N5 lists dimensions fastest first: reverse to (z, y, x)
    plan, shape3 = _plan_dims(store.shape, source)
    get = lambda i: store[i].read().result()  # noqa: E731
    return Volume(
        source=source,
        format="n5",
        shape=shape3,
        dtype=store.dtype.numpy_dtype,
        read=_mapped_reader(get, plan),
        spacing=spacing,
        unit=unit,
    )


def _zarr_node(location: str) -> tuple[str | None, int, dict]:
    """(``"array"`` | ``"group"`` | None, zarr format, attributes) of the node at ``location``."""
    meta = _read_json(location, "zarr.json")
    if meta is not None:
        return meta.get("node_type"), 3, meta.get("attributes", {}) or {}
    attrs = _read_json(location, ".zattrs") or {}
    if _read_json(location, ".zarray") is not None:
        return "array", 2, attrs
    if _read_json(location, ".zgroup") is not None or attrs:
        return "group", 2, attrs
    return None, 2, {}


def _multiscales(attrs: dict) -> list:
    return (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales") or []


def _ome_scale(ms: dict, ds: dict) -> tuple[list[str] | None, list[float] | None, list[str | None]]:
    axes = ms.get("axes")
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes] if axes else None
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes] if axes else []
    scale = None
    for transforms in (ds.get("coordinateTransformations"), ms.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale" and "scale" in t:
                values = [float(v) for v in t["scale"]]
                scale = values if scale is None else [a * b for a, b in zip(scale, values, strict=True)]
    return names, scale, units


def _open_zarr(location: str, key: str | None) -> Volume:
    key = (key or "").strip("/")
    node_at = _join(location, key)
    source = f"{location} [{key}]" if key else location
    kind, version, attrs = _zarr_node(node_at)
    names = scale = None
    units: list = []
    if kind == "group":
        multiscales = _multiscales(attrs)
        if not multiscales or not multiscales[0].get("datasets"):
            arrays = ", ".join(_children(node_at, ".zarray") + _children(node_at, "zarr.json")) or "see the container"
            raise DataPreparationError(
                f"{source}: is a Zarr group without OME-Zarr multiscales; name an array with the dataset key "
                f"({arrays})."
            )
        ms, ds = multiscales[0], multiscales[0]["datasets"][0]
        names, scale, units = _ome_scale(ms, ds)
        key = _join(key, ds["path"]).strip("/")
        node_at, source = _join(location, key), f"{location} [{key}]"
        kind, version, _ = _zarr_node(node_at)
    elif kind == "array" and key:
        parent_key, _, name = key.rpartition("/")
        _, _, parent_attrs = _zarr_node(_join(location, parent_key))
        for ms in _multiscales(parent_attrs)[:1]:
            for ds in ms.get("datasets", []):
                if ds.get("path") == name:
                    names, scale, units = _ome_scale(ms, ds)
    if kind != "array":
        raise DataPreparationError(f"{source}: no Zarr array or group here (no .zarray, .zgroup or zarr.json).")
    store = _ts_open("zarr3" if version == 3 else "zarr", node_at, source)
    if names is not None and len(names) != store.ndim:
        names = scale = None
    plan, shape3 = _plan_dims(store.shape, source, names)
    spacing = unit = None
    if scale is not None:
        kept = [i for i, p in enumerate(plan) if isinstance(p, str)]
        spacing = tuple(scale[i] for i in kept)
        spacing = (None,) + spacing if len(spacing) == 2 else spacing
        unit = next((units[i] for i in kept if i < len(units) and units[i]), None)
    get = lambda i: store[i].read().result()  # noqa: E731
    return Volume(
        source=source,
        format="zarr",
        shape=shape3,
        dtype=store.dtype.numpy_dtype,
        read=_mapped_reader(get, plan),
        spacing=spacing,
        unit=unit,
    )


# ---- NIfTI / MHA / NRRD (MONAI) ---------------------------------------------------------------------------


def _open_monai(path: Path) -> Volume:
    """NIfTI through MONAI's ``NibabelReader``, MHA/MHD/NRRD (and other ITK formats) through its ``ITKReader``:
    the readers of ``LoadImage``, used directly so that the file's dtype is kept (``LoadImage`` makes uint16
    int32 or float32)."""
    from monai.data import ITKReader, NibabelReader

    nifti = _suffix(path) in (".nii", ".nii.gz")
    try:
        reader = NibabelReader() if nifti else ITKReader()
        array, meta = reader.get_data(reader.read(str(path)))
    except Exception as err:  # noqa: BLE001
        raise DataPreparationError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}).") from err
    array = np.asarray(array)
    try:
        pixdim = np.asarray(meta["pixdim"], float)[1:4] if nifti else np.asarray(meta["spacing"], float)
        pixdim = [float(v) for v in pixdim.ravel()]
    except Exception:  # noqa: BLE001 - spacing is optional
        pixdim = []
    while array.ndim > 2 and array.shape[-1] == 1:  # trailing channel / time dims of size 1
        array = array[..., 0]
    if array.ndim == 2:
        array = array.T[None]  # MONAI returns (x, y): restore (H, W)
        spacing = (None, *pixdim[:2][::-1]) if len(pixdim) >= 2 else None
    elif array.ndim == 3:
        array = array.transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
        spacing = tuple(pixdim[:3][::-1]) if len(pixdim) >= 3 else None
    else:
        raise DataPreparationError(f"{path}: expected a 2D image or a 3D stack, got shape {array.shape}.")
    array = np.ascontiguousarray(array)
    return Volume(
        source=str(path),
        format="monai",
        shape=array.shape,
        dtype=array.dtype,
        read=lambda index: array[index],
        spacing=spacing,
        files=[path],
        lazy=False,
    )


# ---- dispatch ---------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_n5(path: Path) -> bool:
    return path.suffix.lower() == ".n5" or (path / "attributes.json").is_file()


def _is_zarr(path: Path) -> bool:
    markers = (".zarray", ".zgroup", ".zattrs", "zarr.json")
    return path.suffix.lower() == ".zarr" or any((path / m).is_file() for m in markers)


def _open_file(path: Path, key: str | None) -> Volume:
    suffix = _suffix(path)
    if key is not None and suffix not in _HDF5:
        raise DataPreparationError(f"{path}: a dataset key ('{key}') applies to HDF5, N5 and Zarr only.")
    if suffix in _TIFF:
        return _open_tiff(path)
    if suffix in _PIL:
        return _open_pil(path)
    if suffix in _HDF5:
        return _open_hdf5(path, key)
    return _open_monai(path)


def open_volume(path: str | Path | Sequence[str | Path], key: str | None = None) -> Volume:
    """Open an image, a stack, a folder or glob of per-slice files, or a container array as a :class:`Volume`.

    Args:
        path: a file; a folder of per-slice files (sorted naturally); a glob pattern; a list of per-slice
            files (kept in the given order); an N5 or Zarr folder; or an ``s3://``, ``gs://`` or ``https://``
            URL of an N5 or Zarr container.
        key: dataset inside an HDF5 file, or array path inside an N5/Zarr container (``em/fibsem-uint16/s0``).
            Optional when an HDF5 file holds one dataset, for an N5 multiscale group (``s0`` is used) and
            for an OME-Zarr image (its first, full-resolution dataset is used).

    Raises:
        DataPreparationError: the path does not exist, matches nothing, cannot be read, the key is wrong, or
            the data are not one single-channel 2D image or 3D stack. No other exception leaves this function
            (a failure of a third-party reader is wrapped, naming the file).
    """
    try:
        return _open_volume(path, key)
    except DataPreparationError:
        raise
    except Exception as err:  # noqa: BLE001 - the contract: every failure is one message naming the file
        where = ", ".join(map(str, path[:3])) if isinstance(path, (list, tuple)) else str(path)
        raise DataPreparationError(
            f"{where}: cannot be opened; the file or its metadata is corrupt ({type(err).__name__}: {err})."
        ) from err


def _open_volume(path: str | Path | Sequence[str | Path], key: str | None) -> Volume:
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        for f in files:
            if not f.is_file():
                raise DataPreparationError(f"{f}: file not found.")
        return _open_stack(files, f"{files[0].parent} ({len(files)} files)" if files else "empty file list")
    text = str(path)
    if _URL.match(text):
        if ".n5" in text.lower():
            return _open_n5(text, key)
        if ".zarr" in text.lower():
            return _open_zarr(text, key)
        raise DataPreparationError(f"{text}: a URL must name an N5 (.n5) or Zarr (.zarr) container.")
    location = Path(text)
    if not location.exists() and any(c in text for c in "*?["):
        files = sorted((Path(p) for p in _glob.glob(text) if Path(p).is_file()), key=natural_key)
        if not files:
            raise DataPreparationError(f"{text}: no file matches this pattern.")
        if key is not None:
            raise DataPreparationError(f"{text}: a dataset key ('{key}') does not apply to a glob of files.")
        return _open_stack(files, text) if len(files) > 1 else _open_file(files[0], None)
    if not location.exists():
        raise DataPreparationError(f"{location}: file not found.")
    if location.is_dir():
        if _is_zarr(location):
            return _open_zarr(text, key)
        if _is_n5(location):
            return _open_n5(text, key)
        if key is not None:
            raise DataPreparationError(f"{location}: a folder of files has no dataset key ('{key}').")
        files = [p for p in location.iterdir() if p.is_file() and not p.name.startswith(".")]
        files = sorted((p for p in files if _suffix(p) in IMAGE_SUFFIXES), key=natural_key)
        return _open_stack(files, str(location))
    return _open_file(location, key)
