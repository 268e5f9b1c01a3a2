"""How masks and label maps become class labels.

A mask's foreground is decided by a :class:`MaskRule` (a threshold, ``nonzero``, or ``auto``: see
:func:`mask_rule`); a label map's values are looked up in a value -> class table that refuses values outside
the class list unless they are mapped to background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scsam_monai.io.readers import DataPreparationError

__all__ = ["MaskRule", "mask_rule", "DistinctValues", "label_lookup", "apply_lookup"]


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


class DistinctValues:
    """Distinct values of a volume, slice by slice (all of them, or the first ``limit``)."""

    def __init__(self, limit: int | None = None) -> None:
        self.values: set = set()
        self.limit = limit

    def update(self, array: np.ndarray) -> None:
        """Add the distinct values of one slice (nothing more once more than ``limit`` are known)."""
        if self.limit is not None and len(self.values) > self.limit:
            return
        array = np.asarray(array)
        if array.dtype.kind in "bu" and array.dtype.itemsize == 1:
            present = np.flatnonzero(np.bincount(array.ravel().view(np.uint8), minlength=256))
        else:
            present = np.unique(array)
        self.values.update(present.tolist())


def label_lookup(cell: str, path: str, seen: set, classes: list[str], label_values: dict | None, unmapped: str) -> dict:
    """Label value -> class index for one label map; raises on values outside the class list.

    Args:
        cell: the cell's name, for messages.
        path: the label map, for messages.
        seen: every value the label map holds.
        classes: the class names (label values 1..C).
        label_values: class name -> values (``--label-values``); None for values 0..C as the classes.
        unmapped: ``error`` or ``background`` for values outside the mapping.
    """
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


def apply_lookup(array: np.ndarray, lookup: dict, path: str) -> np.ndarray:
    """Map every value of a label-map slice through ``lookup`` (from :func:`label_lookup`) to class indices."""
    values, inverse = np.unique(array, return_inverse=True)
    try:
        mapped = np.array([lookup[float(v)] for v in values], dtype=np.int64)
    except KeyError as err:
        raise DataPreparationError(
            f"{path}: label value {err.args[0]:g} was not seen when the map was checked."
        ) from err
    return mapped[inverse].reshape(array.shape)
