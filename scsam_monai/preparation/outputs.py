"""What ``scsam-prepare`` writes: slice TIFFs with their checksums, the datalist, the manifest's cell records,
and the staging folder that is swapped into place only when everything is written."""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from scsam_monai.hashing import sha256_file
from scsam_monai.io.readers import DataPreparationError, Volume
from scsam_monai.preparation.cells import PreparedCell
from scsam_monai.preparation.splits import SPLITS

__all__ = ["TOOL", "write_slice_tiff", "check_out_dir", "swap_into_place", "datalist_json", "cell_record"]

_OUTPUTS = ("images", "labels", "folds", "datalist.json", "manifest.json")
TOOL = "scsam-prepare"
"""The name written in (and recognised from) the manifest."""


def write_slice_tiff(path: Path, array: np.ndarray, compress: bool) -> str:
    """Write one slice as a TIFF (zlib-compressed when ``compress``) and return the SHA-256 of the file."""
    import tifffile

    buffer = _io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib" if compress else None)
    data = buffer.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is a file, or not empty and not written by an earlier ``scsam-prepare``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataPreparationError(f"{out_dir}: exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / "manifest.json"
        try:
            ours = json.loads(manifest.read_text()).get("tool") == TOOL
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise DataPreparationError(
                f"{out_dir}: exists, is not empty and was not written by {TOOL}; choose a new or empty folder."
            )


def swap_into_place(staging: Path, out_dir: Path) -> None:
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


def datalist_json(
    entries: dict[str, list], classes: list[str], description: str, pixel_size: float | None = None
) -> dict:
    """The MONAI datalist of one split assignment (``training``, ``validation``, ``test`` and the labels), with the
    slices' pixel size in nm when it is known (training records the model's pixel size from it)."""
    return {
        "name": "scsam-prepared-em",
        "description": description,
        **({} if pixel_size is None else {"pixel_size": pixel_size}),
        "labels": {str(i): n for i, n in enumerate(["background", *classes])},
        "numTraining": len(entries["training"]),
        "numValidation": len(entries["validation"]),
        "numTest": len(entries["test"]),
        **{s: entries[s] for s in SPLITS},
    }


def _describe_files(volume: Volume) -> list[dict]:
    return [{"path": str(Path(f).resolve()), "sha256": sha256_file(f)} for f in volume.files]


def cell_record(cell: PreparedCell, classes: list[str], counts: np.ndarray, data_sha: str, main: int, ax: int) -> dict:
    """The manifest's record of one cell: sources with checksums, window, slices per split, masks or labels."""
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
