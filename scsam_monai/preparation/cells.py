"""A cell opened for preparation, and what is done with it before and while slices are written.

:func:`open_cell` opens the image with its masks or label map and checks that their shapes agree;
:func:`check_plan` checks the split, crop and downscale against every cell before anything is written;
:func:`measure_cell` (pass 1) finds the intensity window, the masks' rules and the label map's values;
:func:`label_slice` (pass 2) turns one slice of masks or label map into class indices.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scsam_monai.data.normalize import PercentileAccumulator
from scsam_monai.io.readers import DataPreparationError, Volume, open_volume
from scsam_monai.preparation.geometry import crop_slice, downscale_label
from scsam_monai.preparation.labels import DistinctValues, MaskRule, apply_lookup, label_lookup, mask_rule
from scsam_monai.preparation.sources import CellSource
from scsam_monai.preparation.splits import SPLITS

__all__ = [
    "PreparedCell",
    "safe_name",
    "resolve_classes",
    "open_cell",
    "check_plan",
    "measure_cell",
    "label_slice",
]


@dataclass
class PreparedCell:
    """A cell opened for preparation: its volumes, and what the passes learn about it.

    Args:
        source: the cell as given.
        image: its image volume.
        masks: class name -> mask volume (empty for a label map).
        mask_paths: class name -> how messages name that mask.
        labels: the label-map volume (None for masks).
        split_of: slice index -> split (one per fold in k-fold mode); filled by the split.
        window: the intensity window (an :class:`~scsam_monai.data.normalize.IntensityWindow`), from pass 1.
        rules: class name -> the mask's foreground rule, from pass 1.
        lookup: label value -> class index of a label map, from pass 1.
        distinct: distinct values seen per mask (and ``labels``), for the manifest.
        counts: foreground pixels per mask, from pass 2.
        overlaps: overlapping pixels per pair of masks, from pass 2.
    """

    source: CellSource
    image: Volume
    masks: dict[str, Volume]
    mask_paths: dict[str, str]
    labels: Volume | None
    split_of: dict[int, list[str]] = field(default_factory=dict)
    window: Any = None
    rules: dict[str, MaskRule] = field(default_factory=dict)
    lookup: dict | None = None
    distinct: dict[str, list] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    overlaps: dict[str, int] = field(default_factory=dict)


def safe_name(name: str) -> str:
    """``name`` made safe for file names (runs of other characters become ``_``; ``cell`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "cell"


def resolve_classes(cells: Sequence[CellSource], classes: Sequence[str] | None) -> list[str]:
    """The class names: ``classes`` when given, else the first cell's mask names or label-value names."""
    if classes:
        out = [c.strip() for c in classes if c.strip()]
    elif cells[0].masks:
        out = [m.name for m in cells[0].masks]
    elif cells[0].label_values:
        out = [n for n in cells[0].label_values if n != "background"]
    else:
        raise DataPreparationError(
            "name the classes (--classes nucleus,mitochondria,granules): label value i is class i."
        )
    if len(set(out)) != len(out) or "background" in out:
        raise DataPreparationError(f"class names must be unique and not 'background', got {out}.")
    return out


def open_cell(source: CellSource, classes: list[str], stack: contextlib.ExitStack) -> PreparedCell:
    """Open a cell's image with its masks (one per class) or label map in ``stack``; their shapes must agree."""
    if bool(source.masks) == (source.labels is not None):
        raise DataPreparationError(
            f"cell '{source.name}': give either masks or one label map, not {'both' if source.masks else 'neither'}."
        )
    image = stack.enter_context(open_volume(source.image, source.image_key))
    if min(image.shape) == 0:
        raise DataPreparationError(f"{image.source}: the volume is empty (shape {image.shape}).")
    masks, paths = {}, {}
    labels = None
    if source.masks:
        by_name = {}
        for m in source.masks:
            if m.name in by_name:
                raise DataPreparationError(f"cell '{source.name}': two masks are named '{m.name}'.")
            by_name[m.name] = m
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise DataPreparationError(
                f"cell '{source.name}': no mask for class(es) {', '.join(missing)} (give --mask NAME=PATH)."
            )
        for c in classes:
            masks[c] = stack.enter_context(open_volume(by_name[c].path, by_name[c].key))
            paths[c] = masks[c].source
    else:
        labels = stack.enter_context(open_volume(source.labels, source.labels_key))
    for vol in [*masks.values(), *([labels] if labels is not None else [])]:
        if vol.shape != image.shape:
            raise DataPreparationError(
                f"{vol.source}: shape {vol.shape} differs from the image {image.source} {image.shape}."
            )
    return PreparedCell(source, image, masks, paths, labels)


def check_plan(
    cells: list[PreparedCell], ax: int, crop: tuple | None, downscale: int, main: int, warnings: list
) -> None:
    """Check the split (training and validation not empty), crop and downscale against every cell."""
    counts = dict.fromkeys(SPLITS, 0)
    for cell in cells:
        for splits in cell.split_of.values():
            counts[splits[main]] += 1
    for s in ("training", "validation"):
        if counts[s] == 0:
            raise DataPreparationError(
                f"the {s} split is empty: no slice of any cell falls into it (check the split options and "
                "--middle-slices against the volumes' sizes)."
            )
    for cell in cells:
        plane = tuple(s for i, s in enumerate(cell.image.shape) if i != ax)
        if crop is not None:
            (y0, y1), (x0, x1) = crop
            if not (0 <= y0 < y1 <= plane[0] and 0 <= x0 < x1 <= plane[1]):
                raise DataPreparationError(
                    f"{cell.image.source}: --crop {y0}:{y1},{x0}:{x1} is outside its {plane[0]} x {plane[1]} slices."
                )
            plane = (y1 - y0, x1 - x0)
        if min(plane) < downscale:
            raise DataPreparationError(
                f"{cell.image.source}: slices of {plane} pixels are smaller than --downscale {downscale}."
            )


def _finite(array: np.ndarray, source: str, index: int, ax: int) -> np.ndarray:
    """``array`` if it holds no NaN or infinite values; else an error naming the volume and the slice."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DataPreparationError(
            f"{source}: slice {index} along {'zyx'[ax]} holds {bad} NaN or infinite value(s); replace them (e.g. with "
            "the background intensity) or leave the slice out (--middle-slices, --train-slices, --crop)."
        )
    return array


def measure_cell(
    cell: PreparedCell, ax: int, crop: tuple | None, classes: list[str], options: dict, warnings: list, progress: bool
) -> None:
    """Pass 1: the intensity window, the masks' rules and the label map's values, before anything is written."""
    from tqdm.auto import tqdm

    indices = sorted(cell.split_of)
    if not indices:  # a cell left out of every split is not read
        return
    accumulator = PercentileAccumulator(cell.image.dtype, cell.image.source, len(indices))
    distinct = {c: DistinctValues(limit=2) for c in cell.masks}
    maxima = dict.fromkeys(cell.masks, -np.inf)
    seen = DistinctValues()
    for i in tqdm(indices, desc=f"check {cell.source.name}", unit="slice", disable=not progress, leave=False):
        accumulator.update(_finite(crop_slice(cell.image.read_slice(i, ax), crop), cell.image.source, i, ax))
        for c, vol in cell.masks.items():
            mask = _finite(crop_slice(vol.read_slice(i, ax), crop), vol.source, i, ax)
            distinct[c].update(mask)
            maxima[c] = max(maxima[c], float(mask.max()))
        if cell.labels is not None:
            seen.update(crop_slice(cell.labels.read_slice(i, ax), crop))
    cell.window = accumulator.window(*options["percentiles"])
    requested = {m.name: m.threshold for m in cell.source.masks}
    for c, vol in cell.masks.items():
        rule = mask_rule(vol.dtype, distinct[c].values, requested.get(c))
        cell.rules[c] = rule
        cell.distinct[c] = sorted(distinct[c].values) if len(distinct[c].values) <= 2 else "more than 2"
        if maxima[c] != 0 and not rule.apply(np.array([maxima[c]]))[0]:
            warnings.append(
                f"{vol.source}: no voxel passes the rule '{rule.description}' although the mask has non-zero values "
                f"(largest {maxima[c]:g}); instance label maps need NAME=PATH:nonzero."
            )
    if cell.labels is not None:
        values = sorted(float(v) for v in seen.values)
        cell.distinct["labels"] = values[:64]
        cell.lookup = label_lookup(
            cell.source.name, cell.labels.source, set(values), classes, cell.source.label_values, options["unmapped"]
        )


def label_slice(
    cell: PreparedCell, i: int, ax: int, crop: tuple | None, factor: int, classes: list[str], overlap: str
) -> np.ndarray:
    """Pass 2: slice ``i`` of a cell's label map or masks as class indices (0 background, 1..C)."""
    if cell.labels is not None:
        raw = crop_slice(cell.labels.read_slice(i, ax), crop)
        return downscale_label(apply_lookup(raw, cell.lookup, cell.labels.source), factor)
    fg = [
        downscale_label(cell.rules[c].apply(crop_slice(cell.masks[c].read_slice(i, ax), crop)), factor) for c in classes
    ]
    for (a, ma), (b, mb) in itertools.combinations(zip(classes, fg, strict=True), 2):
        both = int(np.count_nonzero(ma & mb))
        if both:
            cell.overlaps[f"{a}&{b}"] = cell.overlaps.get(f"{a}&{b}", 0) + both
            if overlap == "error":
                raise DataPreparationError(
                    f"{cell.mask_paths[a]} and {cell.mask_paths[b]}: masks '{a}' and '{b}' overlap in {both} pixels "
                    f"of slice {i}; choose a priority with --overlap first|last."
                )
    for c, m in zip(classes, fg, strict=True):
        cell.counts[f"mask:{c}"] = cell.counts.get(f"mask:{c}", 0) + int(np.count_nonzero(m))
    label = np.zeros(fg[0].shape, np.int64)
    order = range(len(classes) - 1, -1, -1) if overlap == "first" else range(len(classes))
    for k in order:
        label[fg[k]] = k + 1
    return label
