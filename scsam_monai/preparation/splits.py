"""How prepared slices are split into training, validation and test; splits never share a slice.

By cell: the paper's default (the last cell trains, the others validate), explicit cell lists, or k-fold by
cell. By slice ranges (explicit, for a single volume): every slice index belongs to at most one split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scsam_monai.io.readers import DataPreparationError

if TYPE_CHECKING:
    from scsam_monai.preparation.cells import PreparedCell

__all__ = ["SPLITS", "SplitSpec", "parse_ranges", "select_slices", "assign_splits"]

SPLITS = ("training", "validation", "test")


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


def select_slices(n: int, middle: int | None, source: str, warnings: list[str]) -> list[int]:
    """Indices of the ``middle`` middle slices of ``n`` (all when ``middle`` is None or larger than ``n``)."""
    if middle is None:
        return list(range(n))
    if middle < 1:
        raise DataPreparationError(f"--middle-slices must be at least 1, got {middle}.")
    if middle > n:
        warnings.append(f"{source}: has {n} slices, fewer than --middle-slices {middle}; all are used.")
        return list(range(n))
    start = (n - middle) // 2
    return list(range(start, start + middle))


def assign_splits(cells: list[PreparedCell], selected: dict[str, list[int]], split: SplitSpec) -> dict[str, Any]:
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
