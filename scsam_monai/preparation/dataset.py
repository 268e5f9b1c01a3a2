""":func:`prepare_dataset`, the ``scsam-prepare`` command: cells in, 2D slices, datalist and manifest out.

It opens and checks every cell, measures them (pass 1), then writes every slice into a staging folder and moves
it into place (pass 2), so a failure never leaves a partial data set.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scsam_monai.atomic import atomic_write_json
from scsam_monai.data.normalize import normalize_slice
from scsam_monai.data.pixel_size import in_plane_pixel_size
from scsam_monai.io.readers import DataPreparationError
from scsam_monai.preparation.cells import check_plan, label_slice, measure_cell, open_cell, resolve_classes, safe_name
from scsam_monai.preparation.geometry import crop_slice, downscale_image
from scsam_monai.preparation.outputs import (
    TOOL,
    cell_record,
    check_out_dir,
    datalist_json,
    swap_into_place,
    write_slice_tiff,
)
from scsam_monai.preparation.sources import CellSource
from scsam_monai.preparation.splits import SPLITS, SplitSpec, assign_splits, select_slices

__all__ = ["prepare_dataset"]

_AXES = {"z": 0, "y": 1, "x": 2}


def _slices_pixel_size(cells: Sequence[Any], ax: int, factor: int, warnings: list[str]) -> float | None:
    """The pixel size (nm) of the slices written: the cells' in-plane spacing times ``--downscale``, when every
    cell gives one and they agree within 1%; otherwise None, with a warning (train with ``--pixel_size``)."""
    sizes = []
    for cell in cells:
        volume = cell.image
        spacing = volume.spacing or (None, None, None)
        plane = [s for i, s in enumerate(spacing) if i != ax]
        size, how = in_plane_pixel_size(plane, volume.unit, volume.source)
        if size is None:
            warnings.append(f"{how}: the datalist records no pixel_size (give training --pixel_size).")
            return None
        sizes.append(size * factor)
    if max(sizes) > 1.01 * min(sizes):
        warnings.append(
            f"the cells' pixel sizes differ ({min(sizes):.4g} to {max(sizes):.4g} nm after --downscale): the datalist "
            "records no pixel_size (resample the cells to one size, or give training --pixel_size)."
        )
        return None
    return float(np.median(sizes))


def prepare_dataset(
    cells: Sequence[CellSource],
    out_dir: str | Path,
    *,
    classes: Sequence[str] | None = None,
    axis: str = "z",
    middle_slices: int | None = None,
    crop: tuple[tuple[int, int], tuple[int, int]] | None = None,
    downscale: int = 1,
    overlap: str = "first",
    unmapped: str = "error",
    percentiles: tuple[float, float] = (0.5, 99.5),
    save_dtype: str = "uint8",
    split: SplitSpec | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Prepare cells into ``out_dir``: 2D slices, ``datalist.json`` and ``manifest.json`` (see the module doc).

    Args:
        cells: the cells, in order (the paper's split trains on the last one).
        out_dir: output folder; new, empty, or written by an earlier run (its outputs are replaced; other
            content such as ``embedding_cache/`` is kept).
        classes: class names, label values 1..C in this order; default: the first cell's mask names (or the
            label-value names).
        axis: slicing axis, ``z`` (planes Y, X), ``y`` (Z, X) or ``x`` (Z, Y).
        middle_slices: keep only the N middle slices of every cell (the paper: 350); None keeps all.
        crop: in-plane ``((y0, y1), (x0, x1))`` of every slice.
        downscale: integer in-plane factor: block mean for images, block-centre sampling for labels.
        overlap: ``first`` (the class listed first wins), ``last`` or ``error``.
        unmapped: label values outside the class list: ``error`` or ``background``.
        percentiles: lower and upper percentile of the per-volume intensity window.
        save_dtype: ``uint8`` (0..255) or ``float32`` (0..1) images.
        split: the split (default: the paper's).
        progress: show progress bars.
        command: the command line, recorded in the manifest.

    Returns:
        A summary: ``datalist`` and ``manifest`` paths, slices per split, pixel counts per split and class,
        and warnings.

    Raises:
        DataPreparationError: on any problem with the inputs or options, before anything is written.
    """
    from tqdm.auto import tqdm

    split = split or SplitSpec()
    for name, value, allowed in (
        ("axis", axis, tuple(_AXES)),
        ("overlap", overlap, ("first", "last", "error")),
        ("unmapped", unmapped, ("error", "background")),
        ("save_dtype", save_dtype, ("uint8", "float32")),
    ):
        if value not in allowed:
            raise DataPreparationError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    if int(downscale) < 1:
        raise DataPreparationError(f"--downscale must be a positive integer, got {downscale}.")
    if not cells:
        raise DataPreparationError("no cell given: name at least one --image with its --mask or --labels.")
    names = [c.name for c in cells]
    safe = [safe_name(n) for n in names]
    if len(set(names)) != len(names) or len(set(safe)) != len(safe):
        raise DataPreparationError(f"cell names must be unique (also after making them file-name safe): {names}.")
    classes = resolve_classes(cells, classes)
    out_dir, factor, ax = Path(out_dir), int(downscale), _AXES[axis]
    warnings: list[str] = []
    options = {"percentiles": tuple(float(p) for p in percentiles), "unmapped": unmapped}
    main = split.fold if split.mode == "kfold" else 0
    with contextlib.ExitStack() as stack:
        opened = [open_cell(c, classes, stack) for c in cells]
        selected = {
            c.source.name: select_slices(c.image.shape[ax], middle_slices, c.image.source, warnings) for c in opened
        }
        split_info = assign_splits(opened, selected, split)
        if split.mode == "slices":
            for cell in opened:
                for start, stop in (split.train_slices or []) + (split.val_slices or []) + (split.test_slices or []):
                    if stop > cell.image.shape[ax]:
                        size = cell.image.shape[ax]
                        warnings.append(f"{cell.image.source}: slice range {start}:{stop} goes past its {size} slices.")
        check_plan(opened, ax, crop, factor, main, warnings)
        pixel_size = _slices_pixel_size(opened, ax, factor, warnings)
        check_out_dir(out_dir)
        for cell in opened:
            measure_cell(cell, ax, crop, classes, options, warnings, progress)

        staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
        new_parents = [p for p in staging.parents if not p.exists()]
        done = False
        try:
            (staging / "images").mkdir(parents=True)
            (staging / "labels").mkdir()
            num_folds = split.folds if split.mode == "kfold" else 1
            entries = [{s: [] for s in SPLITS} for _ in range(num_folds)]
            label_dtype = np.uint8 if len(classes) < 255 else np.uint16
            width = max(4, len(str(max(c.image.shape[ax] for c in opened) - 1)))
            slice_records, cell_records = [], []
            totals = {s: np.zeros(len(classes) + 1, np.int64) for s in SPLITS}
            bar = tqdm(
                total=sum(len(c.split_of) for c in opened), desc="write slices", unit="slice", disable=not progress
            )
            for cell, stem in zip(opened, safe, strict=True):
                data_hash = hashlib.sha256()
                cell_counts = np.zeros(len(classes) + 1, np.int64)
                for i in sorted(cell.split_of):
                    raw = cell.image.read_slice(i, ax)
                    data_hash.update(np.ascontiguousarray(raw).tobytes())
                    image = normalize_slice(downscale_image(crop_slice(raw, crop), factor), cell.window, save_dtype)
                    label = label_slice(cell, i, ax, crop, factor, classes, overlap).astype(label_dtype)
                    name = f"{stem}_{axis}{i:0{width}d}.tif"
                    image_sha = write_slice_tiff(staging / "images" / name, image, compress=False)
                    label_sha = write_slice_tiff(staging / "labels" / name, label, compress=True)
                    counts = np.bincount(label.ravel(), minlength=len(classes) + 1)[: len(classes) + 1]
                    cell_counts += counts
                    item = {"image": f"images/{name}", "label": f"labels/{name}", "cell": cell.source.name, "slice": i}
                    for fold, s in enumerate(cell.split_of[i]):
                        entries[fold][s].append(item)
                    totals[cell.split_of[i][main]] += counts
                    slice_records.append(
                        {
                            **item,
                            "split": cell.split_of[i][main] if num_folds == 1 else cell.split_of[i],
                            "image_sha256": image_sha,
                            "label_sha256": label_sha,
                            "pixel_counts": dict(zip(["background", *classes], counts.tolist(), strict=True)),
                        }
                    )
                    bar.update(1)
                cell_records.append(cell_record(cell, classes, cell_counts, data_hash.hexdigest(), main, ax))
            bar.close()
            for k, name in enumerate(classes, start=1):
                if totals["training"][k] == 0:
                    warnings.append(f"class '{name}' has no pixel in the training split.")
            all_names = ["background", *classes]
            description = (
                f"EM slices prepared by {TOOL}: {save_dtype} images normalised per volume to the "
                f"{options['percentiles'][0]:g}-{options['percentiles'][1]:g} percentiles; labels 0 background, "
                + ", ".join(f"{i + 1} {c}" for i, c in enumerate(classes))
                + "."
            )
            manifest = {
                "tool": TOOL,
                "version": 1,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": list(command) if command is not None else None,
                "classes": {str(i): n for i, n in enumerate(all_names)},
                "axis": axis,
                "middle_slices": middle_slices,
                "crop": None if crop is None else [list(crop[0]), list(crop[1])],
                "downscale": factor,
                "pixel_size": pixel_size,
                "overlap": {
                    "first": "where masks overlap, the class listed first wins",
                    "last": "where masks overlap, the class listed last wins",
                    "error": "overlapping masks are an error",
                }[overlap],
                "unmapped_label_values": unmapped,
                "intensity": {
                    "method": "per-volume percentiles",
                    "lower": options["percentiles"][0],
                    "upper": options["percentiles"][1],
                    "dtype": save_dtype,
                },
                "split": split_info,
                "num_slices": {s: len(entries[main][s]) for s in SPLITS},
                "pixel_counts": {s: dict(zip(all_names, totals[s].tolist(), strict=True)) for s in SPLITS},
                "cells": cell_records,
                "slices": slice_records,
                "warnings": warnings,
            }
            if num_folds > 1:
                (staging / "folds").mkdir()
                for fold in range(num_folds):
                    atomic_write_json(
                        staging / "folds" / f"fold_{fold}.json",
                        datalist_json(entries[fold], classes, description, pixel_size),
                    )
            atomic_write_json(staging / "manifest.json", manifest)
            atomic_write_json(staging / "datalist.json", datalist_json(entries[main], classes, description, pixel_size))
            swap_into_place(staging, out_dir)
            done = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for parent in [] if done else new_parents:  # folders made for the staging area, deepest first
                with contextlib.suppress(OSError):
                    parent.rmdir()
    return {
        "datalist": out_dir / "datalist.json",
        "manifest": out_dir / "manifest.json",
        "num_slices": manifest["num_slices"],
        "pixel_counts": manifest["pixel_counts"],
        "warnings": warnings,
    }
