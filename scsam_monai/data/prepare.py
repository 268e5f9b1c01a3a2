"""Turn labelled EM volumes ("cells") into 2D training slices, a MONAI datalist and a manifest.

:func:`prepare_dataset` (the ``scsam-prepare`` command) reads each cell's image volume and either its binary
organelle masks or one integer label map, and writes:

- ``images/<cell>_<axis><index>.tif``: the slice, normalised per volume (robust percentiles, see
  :mod:`scsam_monai.data.normalize`) to uint8 0..255 (or float32 0..1);
- ``labels/<cell>_<axis><index>.tif``: the label map, 0 background and 1..C the classes in the given order;
- ``datalist.json``: MONAI's datalist layout (``training``, ``validation``, ``test``; paths relative to the
  folder), as ``monai.data.load_decathlon_datalist`` reads it; with k-fold splits also ``folds/fold_<k>.json``;
- ``manifest.json``: sources with checksums, the class mapping and the rule that turned every mask into
  foreground, the slice indices of every split, intensity windows and per-class pixel counts.

Masks. A mask's foreground is decided by a rule, recorded in the manifest: a given threshold (foreground =
value >= threshold), ``nonzero``, or by default ``auto``: a mask with exactly two distinct values takes the
larger as foreground (0/1, 0/255 and 1-bit masks); otherwise foreground = value >= half the dtype's maximum
(>= 128 for 8-bit soft-edged masks, 32768 for 16 bit, 0.5 for float). Where masks overlap, ``overlap="first"``
gives the pixel to the class listed first (``"last"``: listed last; ``"error"``: stop).

Label maps. Values 0..C are the classes by default; ``label_values`` maps arbitrary values (several per
class, and ``background``) to classes. A value outside the mapping stops the preparation unless
``unmapped="background"``.

Splits never share a slice. By cell: the paper's default (the last cell trains, the others validate),
explicit cell lists, or k-fold by cell. By slice ranges (explicit, for a single volume): every slice index
belongs to at most one split.

Every problem found in the inputs (shapes that differ, a missing file, label values outside the class list, an
empty or constant volume, NaN or infinite intensities, a wrong dataset key, an unreadable file) raises
:class:`DataPreparationError` naming the file, before anything is written; the output is assembled in a staging
folder and moved into place at the end, so a failure never leaves a partial data set.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io as _io
import itertools
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json
from .io import DataPreparationError, Volume, open_volume
from .normalize import PercentileAccumulator, normalize_slice

__all__ = [
    "DataPreparationError",
    "MaskSource",
    "CellSource",
    "SplitSpec",
    "MaskRule",
    "mask_rule",
    "parse_ranges",
    "parse_label_values",
    "load_cells_spec",
    "prepare_dataset",
    "SPLITS",
]

SPLITS = ("training", "validation", "test")
_AXES = {"z": 0, "y": 1, "x": 2}
_OUTPUTS = ("images", "labels", "folds", "datalist.json", "manifest.json")
_TOOL = "scsam-prepare"


@dataclass
class MaskSource:
    """A binary mask of one class.

    Args:
        name: class name.
        path: file, folder of per-slice files, glob or container (see :func:`~scsam_monai.data.io.open_volume`).
        key: dataset key inside HDF5 / N5 / Zarr.
        threshold: ``None`` or ``"auto"``, ``"nonzero"``, or a number (foreground = value >= number).
    """

    name: str
    path: str | Path
    key: str | None = None
    threshold: float | str | None = None


@dataclass
class CellSource:
    """One cell (one volume) with its masks or label map.

    Args:
        name: cell name (used in file names and for splits).
        image: the EM volume.
        image_key: dataset key of the image inside HDF5 / N5 / Zarr.
        masks: per-class binary masks (or use ``labels``).
        labels: one integer label map.
        labels_key: dataset key of the label map.
        label_values: class name -> label values of that class (``background`` allowed); None: value = class.
    """

    name: str
    image: str | Path
    image_key: str | None = None
    masks: list[MaskSource] = field(default_factory=list)
    labels: str | Path | None = None
    labels_key: str | None = None
    label_values: dict[str, list[float]] | None = None


@dataclass
class SplitSpec:
    """How slices are split; the default is the paper's (the last cell trains, the others validate).

    Args:
        train_cells: cells for training (with ``val_cells``; cells in neither list are left out, unless one
            list is omitted, which then takes every other cell).
        val_cells: cells for validation.
        test_cells: cells held out for testing (combines with every mode but slice ranges).
        folds: k-fold by cell: cells go round-robin into ``folds`` folds in the given order.
        fold: the fold that validates in ``datalist.json`` (every fold is written under ``folds/``).
        train_slices: slice-index ranges ``(start, stop)`` for training, applied to every cell.
        val_slices: ranges for validation.
        test_slices: ranges for testing.
    """

    train_cells: list[str] | None = None
    val_cells: list[str] | None = None
    test_cells: list[str] | None = None
    folds: int | None = None
    fold: int = 0
    train_slices: list[tuple[int, int]] | None = None
    val_slices: list[tuple[int, int]] | None = None
    test_slices: list[tuple[int, int]] | None = None

    @property
    def mode(self) -> str:
        """``slices``, ``kfold``, ``cells`` or ``paper``."""
        if self.train_slices or self.val_slices or self.test_slices:
            return "slices"
        if self.folds is not None:
            return "kfold"
        if self.train_cells is not None or self.val_cells is not None:
            return "cells"
        return "paper"


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """Parse ``"0:8,12:15,20"`` into half-open ranges ``[(0, 8), (12, 15), (20, 21)]``."""
    ranges = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        match = re.fullmatch(r"(\d+)(?::(\d+))?", part)
        if not match:
            raise DataPreparationError(f"slice range '{part}' is not START:STOP or INDEX (e.g. 0:8,12:15).")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start + 1
        if stop <= start:
            raise DataPreparationError(f"slice range '{part}' is empty (STOP must be larger than START).")
        ranges.append((start, stop))
    return ranges


# ---- masks and label maps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskRule:
    """How a mask's values become foreground: ``value >= threshold`` (kind ``ge``) or ``value != 0``."""

    kind: str
    threshold: float | None
    description: str

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Boolean foreground of ``array``."""
        if self.kind == "nonzero":
            return np.asarray(array) != 0
        return np.asarray(array) >= self.threshold

    def as_dict(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold, "rule": self.description}


def _half_max(dtype: np.dtype) -> float:
    if dtype.kind == "b":
        return 1.0
    if dtype.kind in "iu":
        return np.iinfo(dtype).max / 2.0
    return 0.5


def mask_rule(dtype: np.dtype | str, distinct: Sequence[float], requested: float | str | None = None) -> MaskRule:
    """The foreground rule of a mask.

    Args:
        dtype: the mask's dtype.
        distinct: its distinct values (only whether there are exactly two, and which, matters).
        requested: ``None``/``"auto"``, ``"nonzero"`` or a threshold.
    """
    dtype = np.dtype(dtype)
    if requested is not None and requested != "auto":
        if requested == "nonzero":
            return MaskRule("nonzero", None, "given: foreground = value != 0")
        return MaskRule("ge", float(requested), f"given: foreground = value >= {float(requested):g}")
    values = sorted(float(v) for v in distinct)
    if len(values) == 2:
        return MaskRule(
            "ge", values[1], f"auto: two distinct values {values[0]:g}/{values[1]:g}, foreground = {values[1]:g}"
        )
    half = _half_max(dtype)
    return MaskRule(
        "ge",
        half,
        f"auto: {'more than two distinct values' if len(values) > 2 else 'one distinct value'}, "
        f"foreground = value >= {half:g} (half of the {dtype.name} maximum)",
    )


class _Distinct:
    """Distinct values of a volume, slice by slice (all of them, or the first ``limit``)."""

    def __init__(self, limit: int | None = None) -> None:
        self.values: set = set()
        self.limit = limit

    def update(self, array: np.ndarray) -> None:
        if self.limit is not None and len(self.values) > self.limit:
            return
        array = np.asarray(array)
        if array.dtype.kind in "bu" and array.dtype.itemsize == 1:
            present = np.flatnonzero(np.bincount(array.ravel().view(np.uint8), minlength=256))
        else:
            present = np.unique(array)
        self.values.update(present.tolist())


def _label_lookup(
    cell: str, path: str, seen: set, classes: list[str], label_values: dict | None, unmapped: str
) -> dict:
    """Label value -> class index for one label map; raises on values outside the class list."""
    names = ["background", *classes]
    if label_values is None:
        lookup = {v: int(v) for v in seen if float(v).is_integer() and 0 <= v <= len(classes)}
    else:
        lookup = {}
        for name, values in label_values.items():
            if name not in names:
                raise DataPreparationError(
                    f"{path}: --label-values names '{name}', which is not a class ({', '.join(names)})."
                )
            for v in values:
                if float(v) in lookup and lookup[float(v)] != names.index(name):
                    raise DataPreparationError(f"{path}: label value {v:g} is mapped to two classes.")
                lookup[float(v)] = names.index(name)
        lookup.setdefault(0.0, 0)  # 0 is background unless a class claims it
        missing = [c for c in classes if c not in label_values]
        if missing:
            raise DataPreparationError(
                f"{path}: no label value is given for class(es) {', '.join(missing)} in --label-values."
            )
    outside = sorted(v for v in seen if float(v) not in lookup)
    if outside and unmapped != "background":
        shown = ", ".join(f"{v:g}" for v in outside[:12]) + (" ..." if len(outside) > 12 else "")
        listed = f"0..{len(classes)} ({', '.join(names)})" if label_values is None else "--label-values"
        raise DataPreparationError(
            f"{path}: label values {shown} of cell '{cell}' are outside the class list {listed}; map them with "
            "--label-values NAME=V1+V2,... or make them background with --unmapped background."
        )
    return {float(v): lookup.get(float(v), 0) for v in seen}


def _apply_lookup(array: np.ndarray, lookup: dict, path: str) -> np.ndarray:
    values, inverse = np.unique(array, return_inverse=True)
    try:
        mapped = np.array([lookup[float(v)] for v in values], dtype=np.int64)
    except KeyError as err:
        raise DataPreparationError(
            f"{path}: label value {err.args[0]:g} was not seen when the map was checked."
        ) from err
    return mapped[inverse].reshape(array.shape)


# ---- geometry ---------------------------------------------------------------------------------------------


def _crop(array: np.ndarray, crop: tuple | None) -> np.ndarray:
    if crop is None:
        return array
    (y0, y1), (x0, x1) = crop
    return array[y0:y1, x0:x1]


def _downscale_image(array: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor x factor`` pixels (the remainder at the bottom/right is dropped)."""
    if factor == 1:
        return array
    h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    blocks = np.asarray(array[:h, :w], dtype=np.float64).reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3))


def _downscale_label(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest: the centre pixel of each ``factor x factor`` block (the same blocks as the image)."""
    if factor == 1:
        return array
    h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    return array[factor // 2 : h : factor, factor // 2 : w : factor]


# ---- planning ---------------------------------------------------------------------------------------------


@dataclass
class _Cell:
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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "cell"


def _resolve_classes(cells: Sequence[CellSource], classes: Sequence[str] | None) -> list[str]:
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


def _select(n: int, middle: int | None, source: str, warnings: list[str]) -> list[int]:
    if middle is None:
        return list(range(n))
    if middle < 1:
        raise DataPreparationError(f"--middle-slices must be at least 1, got {middle}.")
    if middle > n:
        warnings.append(f"{source}: has {n} slices, fewer than --middle-slices {middle}; all are used.")
        return list(range(n))
    start = (n - middle) // 2
    return list(range(start, start + middle))


def _assign_splits(cells: list[_Cell], selected: dict[str, list[int]], split: SplitSpec) -> dict[str, Any]:
    """Fill ``cell.split_of`` (slice index -> splits, one per fold in k-fold mode) and describe the split."""
    names = [c.source.name for c in cells]
    mode = split.mode
    test = list(split.test_cells or [])
    for group in (split.train_cells, split.val_cells, split.test_cells):
        for n in group or []:
            if n not in names:
                raise DataPreparationError(
                    f"split names cell '{n}', which is not among the cells ({', '.join(names)})."
                )
    if mode == "slices":
        if split.train_cells or split.val_cells or split.test_cells or split.folds is not None:
            raise DataPreparationError(
                "slice-range splits (--train-slices/--val-slices) cannot be combined with cell splits."
            )
        given = (split.train_slices, split.val_slices, split.test_slices)
        ranges = {s: r or [] for s, r in zip(SPLITS, given, strict=True)}
        owner: dict[int, str] = {}
        for s, rs in ranges.items():
            for start, stop in rs:
                for i in range(start, stop):
                    if i in owner and owner[i] != s:
                        raise DataPreparationError(
                            f"slice {i} is in both the {owner[i]} and the {s} ranges: splits must not share slices."
                        )
                    owner[i] = s
        for cell in cells:
            cell.split_of = {i: [owner[i]] for i in selected[cell.source.name] if i in owner}
        return {"mode": "slices", "ranges": {s: [list(r) for r in rs] for s, rs in ranges.items()}}
    rest = [n for n in names if n not in test]
    if mode == "kfold":
        k = split.folds
        if split.train_cells or split.val_cells:
            raise DataPreparationError("--folds cannot be combined with --train-cells/--val-cells.")
        if k is None or k < 2 or k > len(rest):
            raise DataPreparationError(
                f"--folds must be between 2 and the number of non-test cells ({len(rest)}), got {k}."
            )
        if not 0 <= split.fold < k:
            raise DataPreparationError(f"--fold must be between 0 and {k - 1}, got {split.fold}.")
        fold_of = {n: j % k for j, n in enumerate(rest)}
        for cell in cells:
            n = cell.source.name
            per_fold = (
                ["test"] * k if n in test else ["validation" if fold_of[n] == f else "training" for f in range(k)]
            )
            cell.split_of = {i: per_fold for i in selected[n]}
        return {"mode": "kfold", "folds": k, "fold": split.fold, "fold_of_cell": fold_of, "test": test}
    if mode == "cells":
        train = (
            split.train_cells
            if split.train_cells is not None
            else [n for n in rest if n not in (split.val_cells or [])]
        )
        val = split.val_cells if split.val_cells is not None else [n for n in rest if n not in train]
        for n in train:
            if n in val or n in test:
                raise DataPreparationError(
                    f"cell '{n}' is in more than one split: a cell's slices must stay in one split."
                )
        for n in val:
            if n in test:
                raise DataPreparationError(
                    f"cell '{n}' is in more than one split: a cell's slices must stay in one split."
                )
    else:
        if len(rest) < 2:
            raise DataPreparationError(
                f"the paper's split (last cell trains, the others validate) needs at least two cells, got {len(rest)}; "
                "give more cells, --train-cells/--val-cells, or explicit slice ranges (--train-slices/--val-slices)."
            )
        train, val = rest[-1:], rest[:-1]
    if not train:
        raise DataPreparationError("no cell is left for training.")
    split_name = {**{n: "training" for n in train}, **{n: "validation" for n in val}, **{n: "test" for n in test}}
    for cell in cells:
        n = cell.source.name
        cell.split_of = {i: [split_name[n]] for i in selected[n]} if n in split_name else {}
    return {
        "mode": mode,
        "training": train,
        "validation": val,
        "test": test,
        "left_out": [n for n in names if n not in split_name],
    }


def _open_cell(source: CellSource, classes: list[str], stack: contextlib.ExitStack) -> _Cell:
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
    return _Cell(source, image, masks, paths, labels)


# ---- writing ----------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_tiff(path: Path, array: np.ndarray, compress: bool) -> str:
    import tifffile

    buffer = _io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib" if compress else None)
    data = buffer.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataPreparationError(f"{out_dir}: exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / "manifest.json"
        try:
            ours = json.loads(manifest.read_text()).get("tool") == _TOOL
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise DataPreparationError(
                f"{out_dir}: exists, is not empty and was not written by {_TOOL}; choose a new or empty folder."
            )


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Move the staged outputs into ``out_dir``; other content (e.g. ``embedding_cache``) stays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "datalist.json").unlink(missing_ok=True)  # never a complete-looking data set half-way
    trash = out_dir / f".old-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for name in _OUTPUTS:
        if (out_dir / name).exists() and name != "datalist.json":
            os.replace(out_dir / name, trash / name)
    for name in _OUTPUTS:
        if (staging / name).exists() and name != "datalist.json":
            os.replace(staging / name, out_dir / name)
    os.replace(staging / "datalist.json", out_dir / "datalist.json")
    shutil.rmtree(trash, ignore_errors=True)


def _datalist(entries: dict[str, list], classes: list[str], description: str) -> dict:
    return {
        "name": "scsam-prepared-em",
        "description": description,
        "labels": {str(i): n for i, n in enumerate(["background", *classes])},
        "numTraining": len(entries["training"]),
        "numValidation": len(entries["validation"]),
        "numTest": len(entries["test"]),
        **{s: entries[s] for s in SPLITS},
    }


def _describe_files(volume: Volume) -> list[dict]:
    return [{"path": str(Path(f).resolve()), "sha256": _file_sha256(f)} for f in volume.files]


def _check_plan(cells: list[_Cell], ax: int, crop: tuple | None, downscale: int, main: int, warnings: list) -> None:
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


def _measure(
    cell: _Cell, ax: int, crop: tuple | None, classes: list[str], options: dict, warnings: list, progress: bool
) -> None:
    """Pass 1: the intensity window, the masks' rules and the label map's values, before anything is written."""
    from tqdm.auto import tqdm

    indices = sorted(cell.split_of)
    if not indices:  # a cell left out of every split is not read
        return
    accumulator = PercentileAccumulator(cell.image.dtype, cell.image.source, len(indices))
    distinct = {c: _Distinct(limit=2) for c in cell.masks}
    maxima = dict.fromkeys(cell.masks, -np.inf)
    seen = _Distinct()
    for i in tqdm(indices, desc=f"check {cell.source.name}", unit="slice", disable=not progress, leave=False):
        accumulator.update(_finite(_crop(cell.image.read_slice(i, ax), crop), cell.image.source, i, ax))
        for c, vol in cell.masks.items():
            mask = _finite(_crop(vol.read_slice(i, ax), crop), vol.source, i, ax)
            distinct[c].update(mask)
            maxima[c] = max(maxima[c], float(mask.max()))
        if cell.labels is not None:
            seen.update(_crop(cell.labels.read_slice(i, ax), crop))
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
        cell.lookup = _label_lookup(
            cell.source.name, cell.labels.source, set(values), classes, cell.source.label_values, options["unmapped"]
        )


def _label_slice(
    cell: _Cell, i: int, ax: int, crop: tuple | None, factor: int, classes: list[str], overlap: str
) -> np.ndarray:
    if cell.labels is not None:
        raw = _crop(cell.labels.read_slice(i, ax), crop)
        return _downscale_label(_apply_lookup(raw, cell.lookup, cell.labels.source), factor)
    fg = [_downscale_label(cell.rules[c].apply(_crop(cell.masks[c].read_slice(i, ax), crop)), factor) for c in classes]
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
    safe = [_safe(n) for n in names]
    if len(set(names)) != len(names) or len(set(safe)) != len(safe):
        raise DataPreparationError(f"cell names must be unique (also after making them file-name safe): {names}.")
    classes = _resolve_classes(cells, classes)
    out_dir, factor, ax = Path(out_dir), int(downscale), _AXES[axis]
    warnings: list[str] = []
    options = {"percentiles": tuple(float(p) for p in percentiles), "unmapped": unmapped}
    main = split.fold if split.mode == "kfold" else 0
    with contextlib.ExitStack() as stack:
        opened = [_open_cell(c, classes, stack) for c in cells]
        selected = {c.source.name: _select(c.image.shape[ax], middle_slices, c.image.source, warnings) for c in opened}
        split_info = _assign_splits(opened, selected, split)
        if split.mode == "slices":
            for cell in opened:
                for start, stop in (split.train_slices or []) + (split.val_slices or []) + (split.test_slices or []):
                    if stop > cell.image.shape[ax]:
                        size = cell.image.shape[ax]
                        warnings.append(f"{cell.image.source}: slice range {start}:{stop} goes past its {size} slices.")
        _check_plan(opened, ax, crop, factor, main, warnings)
        _check_out_dir(out_dir)
        for cell in opened:
            _measure(cell, ax, crop, classes, options, warnings, progress)

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
            for cell, safe_name in zip(opened, safe, strict=True):
                data_hash = hashlib.sha256()
                cell_counts = np.zeros(len(classes) + 1, np.int64)
                for i in sorted(cell.split_of):
                    raw = cell.image.read_slice(i, ax)
                    data_hash.update(np.ascontiguousarray(raw).tobytes())
                    image = normalize_slice(_downscale_image(_crop(raw, crop), factor), cell.window, save_dtype)
                    label = _label_slice(cell, i, ax, crop, factor, classes, overlap).astype(label_dtype)
                    name = f"{safe_name}_{axis}{i:0{width}d}.tif"
                    image_sha = _write_tiff(staging / "images" / name, image, compress=False)
                    label_sha = _write_tiff(staging / "labels" / name, label, compress=True)
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
                cell_records.append(_cell_record(cell, classes, cell_counts, data_hash.hexdigest(), main, ax))
            bar.close()
            for k, name in enumerate(classes, start=1):
                if totals["training"][k] == 0:
                    warnings.append(f"class '{name}' has no pixel in the training split.")
            all_names = ["background", *classes]
            description = (
                f"EM slices prepared by {_TOOL}: {save_dtype} images normalised per volume to the "
                f"{options['percentiles'][0]:g}-{options['percentiles'][1]:g} percentiles; labels 0 background, "
                + ", ".join(f"{i + 1} {c}" for i, c in enumerate(classes))
                + "."
            )
            manifest = {
                "tool": _TOOL,
                "version": 1,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": list(command) if command is not None else None,
                "classes": {str(i): n for i, n in enumerate(all_names)},
                "axis": axis,
                "middle_slices": middle_slices,
                "crop": None if crop is None else [list(crop[0]), list(crop[1])],
                "downscale": factor,
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
                        staging / "folds" / f"fold_{fold}.json", _datalist(entries[fold], classes, description)
                    )
            atomic_write_json(staging / "manifest.json", manifest)
            atomic_write_json(staging / "datalist.json", _datalist(entries[main], classes, description))
            _swap_into_place(staging, out_dir)
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


def _cell_record(cell: _Cell, classes: list[str], counts: np.ndarray, data_sha: str, main: int, ax: int) -> dict:
    by_split: dict[str, list[int]] = {}
    for i in sorted(cell.split_of):
        by_split.setdefault(cell.split_of[i][main], []).append(i)
    record: dict[str, Any] = {
        "name": cell.source.name,
        "image": {**cell.image.describe(), "files": _describe_files(cell.image), "data_sha256": data_sha},
        "intensity_window": cell.window.as_dict() if cell.window is not None else None,
        "num_slices_in_volume": cell.image.shape[ax],
        "slices": by_split,
        "pixel_counts": dict(zip(["background", *classes], counts.tolist(), strict=True)),
    }
    if cell.masks:
        record["masks"] = {
            c: {
                **vol.describe(),
                "files": _describe_files(vol),
                **(cell.rules[c].as_dict() if c in cell.rules else {}),
                "distinct_values": cell.distinct.get(c),
                "foreground_pixels": cell.counts.get(f"mask:{c}", 0),
            }
            for c, vol in cell.masks.items()
        }
        record["overlaps"] = dict(cell.overlaps)
    else:
        names = ["background", *classes]
        record["labels"] = {
            **cell.labels.describe(),
            "files": _describe_files(cell.labels),
            "label_values": {f"{v:g}": names[k] for v, k in sorted((cell.lookup or {}).items())},
            "values_seen": cell.distinct.get("labels"),
        }
    return record


# ---- cell specs (YAML / JSON) -----------------------------------------------------------------------------


def parse_label_values(text: str) -> dict[str, list[float]]:
    """Parse ``"nucleus=3,mitochondria=191+192,background=0+255"`` into ``{name: [values]}``."""
    mapping: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, values = part.partition("=")
        try:
            parsed = [float(v) for v in values.split("+")] if sep and name.strip() else None
        except ValueError:
            parsed = None
        if not parsed:
            raise DataPreparationError(f"--label-values expects NAME=V1+V2,..., got '{part}'.")
        mapping.setdefault(name.strip(), []).extend(parsed)
    return mapping


def _as_values(spec: Path, name: str, values: Any) -> list[float]:
    values = values if isinstance(values, (list, tuple)) else [values]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise DataPreparationError(f"{spec}: label values of '{name}' must be numbers, got {values}.") from err


def load_cells_spec(path: str | Path) -> tuple[list[CellSource], dict[str, Any]]:
    """Read cells from a YAML or JSON spec; relative paths are relative to the spec's folder.

    Layout::

        classes: [nucleus, mitochondria, granules]      # optional (else the first cell's mask names)
        label_values: {nucleus: 3, mitochondria: [191, 192]}   # optional, for label maps
        cells:
          - name: high_c1
            image: high_c1/high_c1_source.tif          # image_key: for HDF5 / N5 / Zarr
            masks:                                      # class -> path, or {path, key, threshold}
              nucleus: high_c1/high_c1_nucleus_mask.tif
              granules: {path: high_c1/high_c1_granules.tif, threshold: nonzero}
          - name: cell_b
            labels: cell_b/labels.h5                    # or one label map (labels_key, label_values)
            labels_key: seg

    Returns:
        The cells and the spec's options (``classes``, ``label_values``).

    Raises:
        DataPreparationError: the spec cannot be read or is malformed; the message names the file.
    """
    try:
        return _load_cells_spec(Path(path))
    except DataPreparationError:
        raise
    except Exception as err:  # noqa: BLE001 - a malformed entry of any shape: one message naming the spec
        raise DataPreparationError(f"{path}: malformed cell spec ({type(err).__name__}: {err}).") from err


def _load_cells_spec(spec: Path) -> tuple[list[CellSource], dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(spec.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise DataPreparationError(f"{spec}: cannot read the cell spec ({err}).") from err
    except yaml.YAMLError as err:
        raise DataPreparationError(f"{spec}: is not valid YAML/JSON ({err}).") from err
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or not data["cells"]:
        raise DataPreparationError(f"{spec}: expected a mapping with a non-empty 'cells' list.")

    def where(value: Any) -> Any:
        if value is None or "://" in str(value) or Path(str(value)).is_absolute():
            return value
        return str(spec.parent / str(value))

    def values_of(mapping: Any) -> dict[str, list[float]] | None:
        if mapping is None:
            return None
        if not isinstance(mapping, dict):
            raise DataPreparationError(f"{spec}: 'label_values' must map class names to values.")
        return {str(k): _as_values(spec, str(k), v) for k, v in mapping.items()}

    cells = []
    for n, entry in enumerate(data["cells"]):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataPreparationError(f"{spec}: cell {n} needs at least 'image' (and 'masks' or 'labels').")
        masks = entry.get("masks") or {}
        items = masks.items() if isinstance(masks, dict) else [(m.get("name"), m) for m in masks]
        mask_sources = []
        for name, m in items:
            m = m if isinstance(m, dict) else {"path": m}
            if not name or "path" not in m:
                raise DataPreparationError(f"{spec}: a mask of cell {n} needs a name and a path.")
            mask_sources.append(MaskSource(str(name), where(m["path"]), m.get("key"), m.get("threshold")))
        cells.append(
            CellSource(
                name=str(entry.get("name") or Path(str(entry["image"])).stem),
                image=where(entry["image"]),
                image_key=entry.get("image_key"),
                masks=mask_sources,
                labels=where(entry.get("labels")),
                labels_key=entry.get("labels_key"),
                label_values=values_of(entry.get("label_values")),
            )
        )
    options = {"classes": data.get("classes"), "label_values": values_of(data.get("label_values"))}
    return cells, options
