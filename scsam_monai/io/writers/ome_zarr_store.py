"""One OME-Zarr label store that several processes write at once, that a rerun of the same command resumes, and
that viewers (napari, neuroglancer) open fast.

A whole EM dataset is segmented by several ranks into one store; each slice ``z`` (first axis) is written entirely
by one rank, and every array is chunked ``(1, cy, cx)``, so no two ranks ever write the same chunk. Each rank also
writes the downsampled levels of its own slices, so the ownership holds at every pyramid level. A slice counts as
done only when a marker says so, and the marker is written after every array of that slice is on disk: a crash or
a full disk never leaves a half-written slice marked complete, and a rerun writes exactly the slices without one.

Layout (NGFF 0.4, Zarr v2 arrays written by tensorstore, blosc/zstd, ``/`` dimension separator)::

    <stem>_seg.zarr/
        .zgroup, .zattrs                 multiscales (one dataset per level) and image-label (colours, classes)
        0/, 1/, ...                      label levels: (Z, Y, X), then y and x halved (rounded up) per level
        probabilities/<class name>/0/    float32 (Z, Y, X) per foreground class, on request (its own multiscales)
        .scsam/run.json                  the run identity, the shape and class names; "complete" after finish()
        .scsam/done/<z:06d>              one marker per complete slice, written atomically
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scsam_monai.atomic import atomic_write_json, atomic_write_text
from scsam_monai.io.writers.base import remove_path
from scsam_monai.palette import class_colour

__all__ = ["StoreMismatchError", "StoreWriteError", "pyramid_shapes", "downsample_labels", "OmeZarrLabelStore"]

FORMAT = "scsam-ome-zarr-labels"
"""The ``format`` value of ``.scsam/run.json``: what makes a folder a store of ours."""
IDENTITY_KEYS = (
    "run",
    "shape_zyx",
    "class_names",
    "dtype",
    "chunk_yx",
    "probabilities",
    "spacing_zyx",
    "unit",
    "translation_zyx",
)
"""Keys of ``run.json`` that a rerun must repeat exactly to resume the store."""
_COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1}
_NGFF_UNITS = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer"}
_NGFF_UNITS.update({"mm": "millimeter", "cm": "centimeter", "m": "meter", "pm": "picometer", "Å": "angstrom"})
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class StoreMismatchError(ValueError):
    """The output path holds something else: a store of another run (another identity), or not a store of ours."""


class StoreWriteError(OSError):
    """A slice could not be written (e.g. the disk is full); ``errno`` is the cause's when it had one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def pyramid_shapes(shape_yx: Sequence[int], min_side: int = 1024) -> list[tuple[int, int]]:
    """The ``(Y, X)`` shapes of the pyramid levels of a slice: level 0 is ``shape_yx``, and levels halving y and x
    (rounded up) follow while the previous level's longest side exceeds ``min_side``, so that a viewer always
    finds a level near its screen size (2048 wide: 2 levels, 4096: 3, 1024 or less: 1)."""
    y, x = (int(v) for v in shape_yx)
    if y < 1 or x < 1 or int(min_side) < 1:
        raise ValueError(f"pyramid of a {y} x {x} slice with min_side {min_side}: every size must be positive.")
    shapes = [(y, x)]
    while max(shapes[-1]) > min_side:
        y, x = shapes[-1]
        shapes.append(((y + 1) // 2, (x + 1) // 2))
    return shapes


def downsample_labels(labels: np.ndarray) -> np.ndarray:
    """Halve a ``(Y, X)`` uint8 / uint16 label map (rounded up) by the mode of each 2 x 2 block.

    A label map cannot be averaged: each output pixel takes the label most frequent in its block (the partial
    blocks of an odd edge count only the pixels they hold). Ties go to the smallest non-zero label among the
    tied, so that a thin structure (two pixels of a membrane against two of background) survives the
    downsampling instead of vanishing into the background; a block tied between labels 0 only keeps 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"downsample_labels takes a 2D uint8 or uint16 label map, got {labels.dtype} {labels.shape}.")
    # bands of an even number of rows give the same blocks; the temporaries stay a band's size (a 16,384-pixel
    # slice at once would need about 16 bytes per pixel)
    if labels.shape[0] <= _DOWNSAMPLE_BAND:
        return _downsample_band(labels)
    return np.concatenate(
        [_downsample_band(labels[r : r + _DOWNSAMPLE_BAND]) for r in range(0, labels.shape[0], _DOWNSAMPLE_BAND)]
    )


_DOWNSAMPLE_BAND = 512
"""Rows of a label map :func:`downsample_labels` works on at once (even)."""


def _downsample_band(labels: np.ndarray) -> np.ndarray:
    """:func:`downsample_labels` of a band of rows."""
    y, x = labels.shape
    valid = None
    if y % 2 or x % 2:  # pad to even sizes; the padding is no candidate
        padded = np.zeros((y + y % 2, x + x % 2), labels.dtype)
        padded[:y, :x] = labels
        valid = np.zeros(padded.shape, bool)
        valid[:y, :x] = True
        labels = padded
    offsets = ((0, 0), (0, 1), (1, 0), (1, 1))
    blocks = [labels[dy::2, dx::2] for dy, dx in offsets]
    best = blocks[0].copy()
    # most blocks hold one label: only the others need counting (a partial block padded with 0 is uniform only
    # when its pixels are all 0, and then 0 is its mode)
    mixed = (blocks[0] != blocks[1]) | (blocks[0] != blocks[2]) | (blocks[0] != blocks[3])
    where = np.nonzero(mixed)
    values = [b[where].astype(np.int32) for b in blocks]
    masks = [np.ones(len(values[0]), bool) if valid is None else valid[dy::2, dx::2][where] for dy, dx in offsets]
    best_key = np.full(len(values[0]), -1, np.int32)
    chosen = values[0].copy()  # (0, 0) is never padding
    for i in range(4):
        count = sum((values[j] == values[i]) & masks[j] for j in range(4)).astype(np.int32)
        # one integer orders the candidates: frequency first, then non-zero, then the smaller label
        key = np.where(masks[i], (count << 18) + ((values[i] != 0).astype(np.int32) << 17) + 65535 - values[i], -1)
        better = key > best_key
        best_key[better] = key[better]
        chosen[better] = values[i][better]
    best[where] = chosen
    return best


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON (lists, str keys, numbers; NaN and infinities as None), so that a rerun's values
    compare equal to those read back from ``run.json``."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v, where) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"{where}: {type(value).__name__} is not JSON-able; the run identity must be plain JSON.")


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _changes(old: Any, new: Any, name: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs (nested keys joined by dots)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in [*new, *(k for k in old if k not in new)]:
            child = f"{name}.{key}" if name else key
            if key not in old:
                found.append(f"{child}: (absent) -> {_show(new[key])}")
            elif key not in new:
                found.append(f"{child}: {_show(old[key])} -> (absent)")
            else:
                found += _changes(old[key], new[key], child)
        return found
    return [] if old == new else [f"{name}: {_show(old)} -> {_show(new)}"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _multiscales(name: str, levels: int, identity: dict) -> list[dict]:
    """NGFF 0.4 ``multiscales`` of ``levels`` levels halving y and x: level ``k``'s pixel covers ``2^k`` level-0
    pixels, so its scale is ``2^k`` times theirs and its first pixel centre is shifted by ``(2^k - 1) / 2``
    pixels (on top of the ROI's translation, when one is given)."""
    unit = identity["unit"]
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    (sz, sy, sx), origin = identity["spacing_zyx"], identity["translation_zyx"]
    datasets = []
    for k in range(levels):
        f = 2**k
        transforms: list[dict] = [{"type": "scale", "scale": [sz, sy * f, sx * f]}]
        if origin is not None or k > 0:
            tz, ty, tx = origin or (0.0, 0.0, 0.0)
            shift = (f - 1) / 2
            transforms.append({"type": "translation", "translation": [tz, ty + shift * sy, tx + shift * sx]})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    rule = "2x2 block mode; ties to the smallest non-zero label" if levels > 1 else "level 0 only"
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": axes,
            "datasets": datasets,
            "type": "mode",
            "metadata": {"method": rule},
        }
    ]


def _image_label(class_names: list[str]) -> dict:
    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    for value in range(1, len(class_names)):
        colours.append({"label-value": value, "rgba": [round(255 * c) for c in class_colour(value)] + [255]})
    properties = [{"label-value": value, "class": name} for value, name in enumerate(class_names)]
    return {"version": "0.4", "colors": colours, "properties": properties}


def _array_specs(identity: dict) -> list[tuple[str, tuple[int, int, int], np.dtype]]:
    """``(key, shape, dtype)`` of every array of a store, in the order a slice is written."""
    z, y, x = identity["shape_zyx"]
    specs = [(str(k), (z, *yx), np.dtype(identity["dtype"])) for k, yx in enumerate(pyramid_shapes((y, x)))]
    if identity["probabilities"]:
        specs += [(f"probabilities/{n}/0", (z, y, x), np.dtype(np.float32)) for n in identity["class_names"][1:]]
    return specs


def _chunks(identity: dict, shape: Sequence[int]) -> tuple[int, int, int]:
    """One slice per chunk, ``chunk_yx`` square in y and x (clipped to the array)."""
    side = identity["chunk_yx"]
    return 1, min(side, shape[1]), min(side, shape[2])


def _write_error(path: Path, z: int, cause: BaseException) -> StoreWriteError:
    """The error of a failed slice: names the store, the slice and the cause, with the cause's errno (tensorstore
    reports an OS error as ``... [os_error_code='28']``)."""
    code = cause.errno if isinstance(cause, OSError) else None
    match = None if code is not None else _OS_ERROR_CODE.search(str(cause))
    code = int(match.group(1)) if match else code
    text = str(cause) or type(cause).__name__
    if code is not None and os.strerror(code) not in text:
        text = f"{text}: {os.strerror(code)}"
    return StoreWriteError(
        f"{path}: slice {z} could not be written ({text}); it is not marked complete — rerun the same command to "
        "resume",
        code,
    )


class OmeZarrLabelStore:
    """A label store (layout in the module's docstring) opened by one rank; make it with :meth:`open`.

    Args:
        path: the store's folder.
        record: the content of its ``.scsam/run.json``.
        rank: this process's rank.
        world_size: the number of ranks writing the store.
    """

    def __init__(self, path: Path, record: dict, rank: int, world_size: int) -> None:
        import tensorstore as ts

        self.path, self.rank, self.world_size = Path(path), rank, world_size
        self._identity = {key: record[key] for key in IDENTITY_KEYS}
        self._arrays = {}
        context = ts.Context()
        for key, shape, dtype in _array_specs(self._identity):
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": str(self.path / key)},
                "metadata": {"shape": list(shape), "chunks": list(_chunks(self._identity, shape)), "dtype": dtype.str},
                "open": True,
            }
            try:
                self._arrays[key] = ts.open(spec, read=True, write=True, context=context).result()
            except Exception as err:  # noqa: BLE001 - tensorstore reports a missing or different array as ValueError
                raise StoreMismatchError(
                    f"{self.path}: array {key} is missing or does not match .scsam/run.json ({err}); the store is "
                    "damaged: delete it, or pick another --output_dir."
                ) from err

    # ---- opening ------------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        shape_zyx: Sequence[int],
        spacing_zyx: Sequence[float | None],
        unit: str | None = None,
        translation_zyx: Sequence[float] | None = None,
        class_names: list[str],
        run: dict,
        probabilities: bool = False,
        dtype: np.dtype | type = np.uint8,
        chunk_yx: int = 1024,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
    ) -> OmeZarrLabelStore:
        """Create the store (rank 0, when absent) or resume it (same identity), on every rank.

        Rank 0 creates or checks the store, then every rank calls ``barrier()``, then the other ranks check it the
        same way; a failure on rank 0 is raised after its barrier, so the other ranks never wait forever.

        Args:
            path: the store's folder (``<stem>_seg.zarr``); its parent is created.
            shape_zyx: shape ``(Z, Y, X)`` of the label volume.
            spacing_zyx: voxel size ``(z, y, x)``; None where unknown (1.0 is written).
            unit: unit of the spacing (``nm`` is written as NGFF's ``nanometer``); None when unknown.
            translation_zyx: physical position of voxel ``(0, 0, 0)`` (an ROI's offset times the spacing).
            class_names: the name of each label value; ``class_names[0]`` is the background.
            run: the run identity (weights digest, preprocessing, tiling, ROI, input...): plain JSON.
            probabilities: also store a float32 probability array per foreground class.
            dtype: uint8 or uint16 label voxels.
            chunk_yx: chunk side in y and x (chunks are ``(1, chunk_yx, chunk_yx)``, clipped to each level).
            rank: this process's rank; rank 0 creates the store.
            world_size: the number of ranks.
            barrier: waits until every rank has called it; required when ``world_size > 1``.

        Raises:
            StoreMismatchError: the path holds a store of another run, or something that is not a store of ours
                (it is never deleted).
            ValueError: an argument is invalid.
        """
        path = Path(path)
        identity = cls._identity_of(shape_zyx, spacing_zyx, unit, translation_zyx, class_names, run)
        identity.update(dtype=np.dtype(dtype).name, chunk_yx=int(chunk_yx), probabilities=bool(probabilities))
        cls._validate(path, identity)
        if not 0 <= rank < world_size:
            raise ValueError(f"{path}: rank {rank} is not in 0..{world_size - 1} (world_size {world_size}).")
        if world_size > 1 and barrier is None:
            raise ValueError(f"{path}: {world_size} ranks need a barrier to open the store together.")
        if rank == 0:  # creates or checks, then releases the others even when it failed
            failure = None
            try:
                record = cls._create_or_check(path, identity)
            except Exception as err:  # noqa: BLE001 - raised below, after the other ranks are released
                failure = err
            if barrier is not None:
                barrier()
            if failure is not None:
                raise failure
        else:
            barrier()
            if not path.exists():
                raise RuntimeError(f"{path}: rank 0 did not create the store; see rank 0's error.")
            record = cls._check(path, identity)
        return cls(path, record, rank, world_size)

    @staticmethod
    def _identity_of(
        shape_zyx: Sequence[int],
        spacing_zyx: Sequence[float | None],
        unit: str | None,
        translation_zyx: Sequence[float] | None,
        class_names: list[str],
        run: dict,
    ) -> dict:
        if not isinstance(run, dict):
            raise ValueError(f"the run identity must be a dict, got {type(run).__name__}.")
        unit = None if unit in (None, "", "pixel") else _NGFF_UNITS.get(str(unit), str(unit))
        spacing = [1.0 if s is None else float(s) for s in spacing_zyx]
        return {
            "run": _plain(run, "run"),
            "shape_zyx": [int(v) for v in shape_zyx],
            "class_names": [str(n) for n in class_names],
            "spacing_zyx": spacing,
            "unit": unit,
            "translation_zyx": None if translation_zyx is None else [float(v) for v in translation_zyx],
        }

    @staticmethod
    def _validate(path: Path, identity: dict) -> None:
        shape, names, dtype = identity["shape_zyx"], identity["class_names"], np.dtype(identity["dtype"])
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{path}: shape_zyx must be three positive sizes, got {shape}.")
        spacing, origin = identity["spacing_zyx"], identity["translation_zyx"]
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"{path}: spacing_zyx must be three positive numbers, got {spacing}.")
        if origin is not None and (len(origin) != 3 or not all(math.isfinite(t) for t in origin)):
            raise ValueError(f"{path}: translation_zyx must be three finite numbers, got {origin}.")
        if dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{path}: labels are stored as uint8 or uint16, not {dtype}.")
        if not 2 <= len(names) <= np.iinfo(dtype).max + 1 or len(set(names)) != len(names):
            raise ValueError(f"{path}: class_names must be 2 to {np.iinfo(dtype).max + 1} distinct names: {names}.")
        if identity["probabilities"] and any(not n or n[0] == "." or re.search(r"[/\\\0]", n) for n in names[1:]):
            raise ValueError(
                f"{path}: class names name the probability folders; {names[1:]} must not be empty, "
                "start with '.' or hold '/' or '\\'."
            )
        if identity["chunk_yx"] < 1:
            raise ValueError(f"{path}: chunk_yx must be positive, got {identity['chunk_yx']}.")

    @classmethod
    def _create_or_check(cls, path: Path, identity: dict) -> dict:
        """Rank 0: build a new store in a hidden partial folder and rename it into place (a crash leaves no store
        without its ``run.json``), or check the one there."""
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            return cls._check(path, identity)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".partial-{uuid.uuid4().hex[:8]}-{path.name}")
        record = {"format": FORMAT, "format_version": 1, **identity, "created": _now(), "complete": False}
        try:
            cls._build(partial, path.stem, record)
            os.replace(partial, path)  # also over an empty folder
        except BaseException:
            remove_path(partial)
            raise
        return record

    @staticmethod
    def _build(folder: Path, name: str, record: dict) -> None:
        """Write the metadata, the empty arrays and ``run.json`` of a new store into ``folder``."""
        import tensorstore as ts

        levels = len(pyramid_shapes(record["shape_zyx"][1:]))
        folder.mkdir()
        atomic_write_json(folder / ".zgroup", {"zarr_format": 2})
        attrs = {"multiscales": _multiscales(name, levels, record), "image-label": _image_label(record["class_names"])}
        atomic_write_json(folder / ".zattrs", attrs)
        if record["probabilities"]:
            atomic_write_json(folder / "probabilities" / ".zgroup", {"zarr_format": 2})
        for class_name in record["class_names"][1:] if record["probabilities"] else []:
            atomic_write_json(folder / "probabilities" / class_name / ".zgroup", {"zarr_format": 2})
            attrs = {"multiscales": _multiscales(class_name, 1, record)}
            atomic_write_json(folder / "probabilities" / class_name / ".zattrs", attrs)
        for key, shape, dtype in _array_specs(record):
            metadata = {"shape": list(shape), "chunks": list(_chunks(record, shape)), "dtype": dtype.str}
            metadata.update(compressor=_COMPRESSOR, fill_value=0, dimension_separator="/", order="C", filters=None)
            ts.open(
                {"driver": "zarr", "kvstore": {"driver": "file", "path": str(folder / key)}, "metadata": metadata},
                create=True,
            ).result()
        (folder / ".scsam" / "done").mkdir(parents=True)
        atomic_write_json(folder / ".scsam" / "run.json", record)

    @staticmethod
    def _check(path: Path, identity: dict) -> dict:
        """The record of the ScSAM store at ``path`` when it has this identity; else :class:`StoreMismatchError`."""
        run_file = path / ".scsam" / "run.json"
        try:
            record = json.loads(run_file.read_text())
        except (OSError, ValueError) as err:
            record = err
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise StoreMismatchError(
                f"{path}: exists and is not a ScSAM label store (no readable .scsam/run.json); it was left "
                "untouched. Pick another --output_dir, or move or delete it yourself."
            )
        changes = _changes({k: record.get(k) for k in IDENTITY_KEYS}, identity)
        if changes:
            listed = "\n  ".join(changes)
            raise StoreMismatchError(
                f"{path}: holds the output of another run, so it cannot be resumed; what changed:\n  {listed}\n"
                "Pick another --output_dir, or delete the store to start it again."
            )
        return record

    # ---- the layout ---------------------------------------------------------------------------------------------

    @property
    def levels(self) -> list[tuple[int, int, int]]:
        """The ``(Z, Y, X)`` shape of each label level, full resolution first."""
        z = self._identity["shape_zyx"][0]
        return [(z, *yx) for yx in pyramid_shapes(self._identity["shape_zyx"][1:])]

    @property
    def complete(self) -> bool:
        """Whether :meth:`finish` recorded every slice complete."""
        return bool(json.loads((self.path / ".scsam" / "run.json").read_text()).get("complete"))

    # ---- slices -------------------------------------------------------------------------------------------------

    def _slice_index(self, z: int) -> int:
        depth = self._identity["shape_zyx"][0]
        if not 0 <= int(z) < depth:
            raise ValueError(f"{self.path}: slice {z} is outside the store's 0..{depth - 1}.")
        return int(z)

    def completed(self) -> set[int]:
        """The slices whose every array was written (those with a marker in ``.scsam/done``)."""
        depth = self._identity["shape_zyx"][0]
        names = os.listdir(self.path / ".scsam" / "done")
        return {int(n) for n in names if n.isdigit() and int(n) < depth}  # temporary files start with '.'

    def pending(self, indices: Iterable[int]) -> list[int]:
        """``indices`` without the completed slices, in their order: what this rank still has to write."""
        done = self.completed()
        return [z for z in (self._slice_index(i) for i in indices) if z not in done]

    def _write_array(self, key: str, z: int, plane: np.ndarray) -> Any:
        """Start writing ``plane`` as slice ``z`` of array ``key``; the returned future's ``result()`` waits until
        it is on disk."""
        return self._arrays[key][z].write(plane)

    def write_slice(self, z: int, labels: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        """Write slice ``z`` at every level (and its probabilities), then mark it complete.

        Args:
            z: the slice index (first axis).
            labels: ``(Y, X)`` label values ``0..C-1``, any integer dtype.
            probabilities: ``(C, Y, X)`` (background first, not stored) or ``(C - 1, Y, X)`` class probabilities;
                required exactly when the store was opened with ``probabilities=True``.

        Raises:
            ValueError: a wrong slice index, shape, label value or probabilities argument.
            StoreWriteError: writing failed (the slice is not marked complete; a rerun writes it again).
        """
        z = self._slice_index(z)
        names, (_, y, x) = self._identity["class_names"], self._identity["shape_zyx"]
        labels = np.asarray(labels)
        if labels.shape != (y, x) or labels.dtype.kind not in "biu":
            raise ValueError(
                f"{self.path}: slice {z} needs ({y}, {x}) integer labels, got {labels.dtype} {labels.shape}."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(
                f"{self.path}: slice {z} holds labels {labels.min()}..{labels.max()}; the store's "
                f"classes are 0..{len(names) - 1}."
            )
        planes = [labels.astype(self._identity["dtype"], copy=False)]  # no copy of a large slice's labels
        for _ in self.levels[1:]:
            planes.append(downsample_labels(planes[-1]))
        if self._identity["probabilities"] != (probabilities is not None):
            state = "with" if self._identity["probabilities"] else "without"
            raise ValueError(f"{self.path}: slice {z}: the store was opened {state} probabilities.")
        if probabilities is not None:
            probabilities = np.asarray(probabilities, dtype=np.float32)
            if probabilities.shape not in ((len(names), y, x), (len(names) - 1, y, x)):
                raise ValueError(
                    f"{self.path}: slice {z} needs ({len(names)}, {y}, {x}) probabilities, got {probabilities.shape}."
                )
            planes += list(probabilities[len(probabilities) - (len(names) - 1) :])
        keys = [key for key, _, _ in _array_specs(self._identity)]
        marker = self.path / ".scsam" / "done" / f"{z:06d}"
        futures, failures = [], []
        try:
            marker.unlink(missing_ok=True)  # a slice written again is not complete until it is written again
            for key, plane in zip(keys, planes, strict=True):
                futures.append(self._write_array(key, z, plane))
        except Exception as err:  # noqa: BLE001 - reported below, once the writes already started are done
            failures.append(err)
        for future in futures:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001
                failures.append(err)
        try:
            if failures:
                raise failures[0]
            atomic_write_text(marker, json.dumps({"rank": self.rank}) + "\n")
        except Exception as err:  # noqa: BLE001 - every failure of a slice reads the same way
            raise _write_error(self.path, z, err) from err

    def finish(self) -> None:
        """Check that every slice is complete and, on rank 0, record the store complete in ``run.json``. Call it
        after every rank is done (the caller barriers first); other ranks only check.

        Raises:
            RuntimeError: slices are missing (how many, and the first few).
        """
        depth = self._identity["shape_zyx"][0]
        done = self.completed()
        missing = [z for z in range(depth) if z not in done]
        if missing:
            first = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise RuntimeError(
                f"{self.path}: {len(missing)} of {depth} slices are not complete (first: {first}); rerun the same "
                "command to write them."
            )
        if self.rank == 0:
            run_file = self.path / ".scsam" / "run.json"
            record = json.loads(run_file.read_text())
            record.update(complete=True, finished=_now())
            atomic_write_json(run_file, record)
