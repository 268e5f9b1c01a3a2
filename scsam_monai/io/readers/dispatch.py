""":func:`open_volume`: picks the reader for a file, a folder or glob of per-slice files, a list of files, an
N5/Zarr container or a URL; :func:`read_image`: one checked image or slice of any of them (:func:`read_image_2d`:
of a file).

One file opens with the reader its suffix names (the table in :mod:`scsam_monai.io.formats`). Folders that
are N5 or Zarr containers open as arrays; other folders (sorted naturally), globs and lists are stacks of
per-slice files, each slice read from its own file when it is needed. Every failure leaves :func:`open_volume`
as one :class:`~.volume.DataPreparationError` naming the source.
"""

from __future__ import annotations

import glob as _glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scsam_monai.io.formats import (
    HDF5_SUFFIXES,
    IMAGE_SUFFIXES,
    PILLOW_SUFFIXES,
    TIFF_SUFFIXES,
    URL_PATTERN,
    file_suffix,
    is_n5,
    is_zarr,
)
from scsam_monai.io.readers.dims import cached_whole
from scsam_monai.io.readers.hdf5 import open_hdf5
from scsam_monai.io.readers.n5_zarr import open_n5, open_zarr
from scsam_monai.io.readers.nifti_itk import open_monai
from scsam_monai.io.readers.pillow import open_pillow, pillow_header, read_pillow
from scsam_monai.io.readers.tiff import open_tiff
from scsam_monai.io.readers.volume import DataPreparationError, Index, Volume, check_pixels, natural_key

__all__ = ["open_volume", "read_image", "read_image_2d"]


# ---- one file, and per-slice files as a stack -------------------------------------------------------------


def _open_file(path: Path, key: str | None) -> Volume:
    suffix = file_suffix(path)
    if key is not None and suffix not in HDF5_SUFFIXES:
        raise DataPreparationError(f"{path}: a dataset key ('{key}') applies to HDF5, N5 and Zarr only.")
    if suffix in TIFF_SUFFIXES:
        return open_tiff(path)
    if suffix in PILLOW_SUFFIXES:
        return open_pillow(path)
    if suffix in HDF5_SUFFIXES:
        return open_hdf5(path, key)
    return open_monai(path)


def _slice_header(path: Path) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype of a per-slice file, from its header where the format allows."""
    if path.suffix.lower() in PILLOW_SUFFIXES:
        return pillow_header(path)
    with _open_file(path, None) as volume:
        if volume.shape[0] != 1:
            raise DataPreparationError(f"{path}: a per-slice file must hold one 2D image, got shape {volume.shape}.")
        return volume.shape[1:], volume.dtype


def _read_slice_file(path: Path) -> np.ndarray:
    if path.suffix.lower() in PILLOW_SUFFIXES:
        return read_pillow(path)
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

    whole = cached_whole(lambda: np.stack([read_one(i) for i in range(len(files))]))

    def read(index: Index) -> np.ndarray:
        z, y, x = index
        return read_one(z)[y, x] if isinstance(z, int) else whole(index)

    volume = Volume(source=source, format="stack", shape=(len(files), *shape2), dtype=dtype, read=read, files=files)
    volume.notes = notes
    return volume


# ---- dispatch ---------------------------------------------------------------------------------------------


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
    if URL_PATTERN.match(text):
        if ".n5" in text.lower():
            return open_n5(text, key)
        if ".zarr" in text.lower():
            return open_zarr(text, key)
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
        if is_zarr(location):
            return open_zarr(text, key)
        if is_n5(location):
            return open_n5(text, key)
        if key is not None:
            raise DataPreparationError(f"{location}: a folder of files has no dataset key ('{key}').")
        files = [p for p in location.iterdir() if p.is_file() and not p.name.startswith(".")]
        files = sorted((p for p in files if file_suffix(p) in IMAGE_SUFFIXES), key=natural_key)
        return _open_stack(files, str(location))
    return _open_file(location, key)


def read_image(
    source: str | Path, *, index: int | None = None, key: str | None = None, stacks: bool = False
) -> np.ndarray:
    """Read one checked image from anything :func:`open_volume` opens, row-major as the source stores it.

    Args:
        source: a file, folder, container or URL.
        index: the z slice to read (None: the source must be one 2D image, or a stack when ``stacks``).
        key: dataset inside an HDF5 file / array inside an N5 or Zarr container.
        stacks: read a 3D stack whole, as ``(Z, H, W)``.

    Returns:
        ``(H, W)`` (``(Z, H, W)`` for a stack with ``stacks``); 1-bit images come back as uint8 0/1.

    Raises:
        DataPreparationError: (a ``ValueError``) naming the source (and slice) when it cannot be read, is a stack
            where one 2D image was expected, is empty, or holds pixels that are not integers, booleans or finite
            floats.
    """
    with open_volume(source, key) as volume:
        if min(volume.shape) == 0:
            raise DataPreparationError(f"{source}: the image is empty (shape {volume.shape}).")
        if index is not None:
            array, where = volume.read_slice(int(index)), f"{source} (slice {index})"
        elif volume.shape[0] == 1:
            array, where = volume.read_slice(0), source
        elif stacks:
            array, where = volume.read(), source
        else:
            raise DataPreparationError(
                f"{source}: expected a 2D single-channel image, got a stack of shape {volume.shape}."
            )
    check_pixels(array, where)
    return array.astype(np.uint8) if array.dtype == bool else array


def read_image_2d(path: str | Path) -> np.ndarray:
    """Read a single-channel 2D image ``(H, W)`` from the file ``path`` (1-bit images come back as uint8 0/1).

    TIFF through tifffile (any bit depth), PNG/JPEG/BMP through Pillow, NIfTI/MHA/NRRD through MONAI's readers
    (transposed back to the file's (H, W)), HDF5 with a single dataset through h5py.

    Raises:
        FileNotFoundError: when the file does not exist.
        DataPreparationError: as :func:`read_image` (a 3D stack, an empty image, unusable pixels), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    return read_image(path)
