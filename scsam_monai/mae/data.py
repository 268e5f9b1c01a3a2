"""Unlabelled EM slices for MAE pre-training: which slices, and reading one of them.

A user's unlabelled data is a MONAI datalist (its images; labels are ignored), a folder of images (2D slices
and/or 3D stacks), or one volume in any form :func:`scsam_monai.io.readers.open_volume` reads (a multi-page TIFF, a
glob or folder of per-slice files, HDF5, N5/Zarr, NIfTI, ...): every z slice of a volume is one item.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scsam_monai.io.readers import check_pixels, open_volume
from scsam_monai.preparation.splits import parse_ranges

__all__ = ["unlabelled_slices", "read_slice", "LoadSlice2Dd"]


def read_slice(source: str | Path, index: int = 0, key: str | None = None) -> np.ndarray:
    """Read z slice ``index`` of an image or volume (a 2D image is slice 0).

    Args:
        source: anything :func:`~scsam_monai.io.readers.open_volume` opens.
        index: z index.
        key: dataset key inside an HDF5 file or N5/Zarr container; None or "" for none.

    Returns:
        The slice (H, W); 1-bit slices come back as uint8 0/1.

    Raises:
        DataPreparationError (a ValueError): naming the source, when it cannot be read or holds unusable pixels.
    """
    with open_volume(source, key or None) as volume:
        array = volume.read_slice(int(index))
    check_pixels(array, f"{source} (slice {index})")
    return array.astype(np.uint8) if array.dtype == bool else array


def _datalist_images(datalist: str | Path, splits: list[str]) -> list[str]:
    from monai.data import load_decathlon_datalist

    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found (set dataset_dir, or image_dir for a folder or volume).")
    available = json.loads(path.read_text())
    images: list[str] = []
    for split in splits:
        if split in available:
            images += [str(item["image"]) for item in load_decathlon_datalist(str(path), True, split)]
    return images


def _sources(image_dir: str | Path, image_glob: str) -> list[str]:
    """Files matching ``image_glob`` in a folder; otherwise ``image_dir`` itself is one volume (a file, a glob,
    an N5/Zarr folder or URL, a folder of per-slice files with other names)."""
    root = Path(str(image_dir))
    if root.is_dir():
        files = [str(p) for p in sorted(root.glob(image_glob)) if p.is_file()]
        if files:
            return files
    return [str(image_dir)]


def unlabelled_slices(
    *,
    datalist: str | Path | None = None,
    splits: Iterable[str] = ("training", "validation"),
    image_dir: str | Path | None = None,
    image_glob: str = "*.tif",
    volume_key: str | None = None,
    select: str | None = None,
) -> list[dict[str, object]]:
    """Items ``{"image": source, "slice": z, "key": dataset key or ""}`` of the slices to pre-train on.

    Args:
        datalist: MONAI datalist whose ``splits`` name the images (labels are not read); used when ``image_dir``
            is None.
        splits: datalist keys to take images from (absent keys are skipped).
        image_dir: a folder (each file matching ``image_glob`` is an image or a stack), or one volume: a file,
            a glob, a folder of per-slice files that ``image_glob`` does not match, an N5/Zarr folder or URL.
        image_glob: glob of the files inside a folder ``image_dir``.
        volume_key: dataset key inside HDF5 / N5 / Zarr volumes (``image_dir`` only).
        select: keep only these positions of the ordered list of slices, as half-open ranges ``"0:15"`` or
            ``"0:8,11:14"`` (``scsam-prepare``'s ``--train-slices`` syntax): with a volume, z indices; with a folder
            of per-slice files, positions in name order. Use it to keep test slices out of pre-training.

    Raises:
        FileNotFoundError / ValueError: naming the path, when nothing can be found or read.
    """
    if image_dir is not None:
        sources, key = _sources(image_dir, image_glob), volume_key or ""
        where = f"{image_dir} ({image_glob})"
    elif datalist is not None:
        splits = list(splits)
        sources, key = _datalist_images(datalist, splits), ""
        where = f"{datalist} ({', '.join(splits)})"
    else:
        raise ValueError("Name unlabelled images: a datalist (dataset_dir) or a folder or volume (image_dir).")
    items: list[dict[str, object]] = []
    for source in sources:
        with open_volume(source, key or None) as volume:
            items += [{"image": source, "slice": z, "key": key} for z in range(volume.shape[0])]
    if not items:
        raise ValueError(f"No image to pre-train on in {where}.")
    if select:
        ranges = parse_ranges(select)
        beyond = [f"{a}:{b}" for a, b in ranges if b > len(items)]
        if beyond:
            raise ValueError(f"select {select!r}: ranges {beyond} go beyond the {len(items)} slices in {where}.")
        items = [items[i] for i in sorted({i for a, b in ranges for i in range(a, b)})]
    return items


class LoadSlice2Dd(MapTransform):
    """Read the slice an item names (``{"image": source, "slice": z, "key": ...}``) as an (H, W) array.

    Any source :func:`~scsam_monai.io.readers.open_volume` reads; ``slice`` (default 0) is the z index, ``key`` the
    dataset inside a container. The source is kept under ``<key>_path``.

    Args:
        keys: keys holding the sources.
        slice_key: item key of the z index.
        volume_key: item key of the dataset key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_key: str = "slice",
        volume_key: str = "key",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.volume_key = volume_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        index = int(d.get(self.slice_key, 0))
        container_key = str(d.get(self.volume_key) or "") or None
        for key in self.key_iterator(d):
            d[f"{key}_path"] = str(d[key])
            d[key] = read_slice(d[key], index, container_key)
        return d
