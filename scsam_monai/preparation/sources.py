"""What ``scsam-prepare`` prepares: cells (an image with masks or a label map) and where they are described.

:class:`CellSource` and :class:`MaskSource` name the files; :func:`load_cells_spec` reads them from a YAML or
JSON spec and :func:`parse_label_values` reads the ``--label-values`` text of the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scsam_monai.io.readers import DataPreparationError

__all__ = ["MaskSource", "CellSource", "parse_label_values", "load_cells_spec"]


@dataclass
class MaskSource:
    """A binary mask of one class.

    Args:
        name: class name.
        path: file, folder of per-slice files, glob or container (see :func:`~scsam_monai.io.readers.open_volume`).
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
