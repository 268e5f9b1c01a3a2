"""Unlabelled EM slices for MAE pre-training: which slices (read by ``LoadEMImaged`` with ``slice_key="slice"``).

A user's unlabelled data is a MONAI datalist (its images; labels are ignored), a folder of images (2D slices
and/or 3D stacks), or one volume in any form :func:`scsam_monai.io.readers.open_volume` reads (a multi-page TIFF, a
glob or folder of per-slice files, HDF5, N5/Zarr, NIfTI, ...): every z slice of a volume is one item.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from scsam_monai.io.readers import open_volume
from scsam_monai.preparation.splits import parse_ranges

__all__ = ["unlabelled_slices"]


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
