"""Checks of the items a run reads: the datalist file, or the items an override gives.

A datalist file must exist, be valid JSON and have the splits the run reads with an ``image`` (and a ``label``)
in every item; every file it names must exist (one message lists the missing ones); its class list
(``labels``), or the largest value of a few label maps, must agree with ``class_names``.

Items can also reach a run without any file: MONAI Label's ``BundleTrainTask`` and the Model Zoo's
train-config convention set them as ``train#dataset#data`` / ``validate#dataset#data``. :func:`check_items`
checks such a list with the same rules and messages. ``train.yaml`` reads its default items with
:func:`read_split`, whose :class:`DatalistSplit` remembers the file, so that the start-up check knows which of
the two it has been given.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from scsam_monai.io.readers import DataPreparationError, read_image_2d
from scsam_monai.startup_checks.errors import suggest

__all__ = ["DatalistSplit", "read_split", "check_datalist", "check_items"]

logger = logging.getLogger(__name__)

MISSING_SHOWN = 5
"""Missing files named in a message."""


class DatalistSplit(list):
    """The items of one split of a datalist file, with the file and the split they were read from.

    A plain list of ``{"image": ..., "label": ...}`` items (paths made absolute, as
    ``monai.data.load_decathlon_datalist`` makes them) that the run's datasets read like any other. The start-up
    check tells by its type that the items came from the file, and checks that file (its problems named with its
    path, its ``labels`` class list compared with ``class_names``); any other list came from an override and is
    checked item by item, with no file needed.

    Args:
        items: the split's items.
        datalist: the datalist file.
        split: the split's name in it.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]] = (), *, datalist: str | Path, split: str) -> None:
        super().__init__(items)
        self.datalist = Path(datalist)
        self.split = split


def read_split(datalist: str | Path, split: str) -> DatalistSplit:
    """One split of a datalist file as MONAI reads it; ``train.yaml``'s default ``train#dataset#data`` (and
    ``validate#dataset#data``).

    A file or split that cannot be read gives no items instead of an error: the run's start-up check
    (:func:`scsam_monai.startup_checks.validate_run`, first in ``initialize``) receives these items, sees by their
    type that they come from this file, checks the file and reports why, together with every other problem of
    the run, before anything is computed (and a split that the run does not read, such as an evaluation's
    ``training``, stops nothing). The items are ``monai.data.load_decathlon_datalist``'s, read the same way.

    Args:
        datalist: the datalist JSON.
        split: ``training``, ``validation`` or ``test``.
    """
    try:
        items = load_decathlon_datalist(str(datalist), is_segmentation=True, data_list_key=split)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        # the start-up check reports the problem, with the run's others, if the run reads this split
        logger.debug("datalist %s, split %r not read (%s: %s).", datalist, split, type(err).__name__, err)
        items = []
    return DatalistSplit(items, datalist=datalist, split=split)


def _resolve(base: Path | None, value: str) -> Path:
    """A path as the run reads it: relative to the datalist's folder (``load_decathlon_datalist``), or, for
    items without a file (``base`` None), to the folder the run starts in."""
    if base is None:
        return Path(os.path.normpath(value))
    return Path(os.path.normpath(os.path.join(base, value)))


class _ItemCheck:
    """Collects the problems, missing files and label maps of the splits of one source (a file, or an override)."""

    def __init__(self, source: str, base: Path | None, labels: bool) -> None:
        self.source = source
        self.base = base
        self.keys = ("image", "label") if labels else ("image",)
        self.problems: list[str] = []
        self.counts: dict[str, int] = {}
        self.missing: list[str] = []
        self.label_files: dict[str, list[Path]] = {}

    def add_split(self, split: str, items: Any) -> None:
        """Check one split's items: a non-empty list of items with the needed paths, naming existing files."""
        if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
            self.problems.append(
                f"{self.source}: the split '{split}' is not a list of items ({type(items).__name__}); it needs at "
                "least one image."
            )
            return
        if not items:
            self.problems.append(f"{self.source}: the split '{split}' is empty; it needs at least one image.")
            return
        self.counts[split] = len(items)
        for n, item in enumerate(items):
            if not isinstance(item, Mapping) or any(not isinstance(item.get(k), str) for k in self.keys):
                self.problems.append(
                    f"{self.source}: item {n} of '{split}' needs {' and '.join(self.keys)} paths, got {item!r}."
                )
                continue
            for key in self.keys:
                file = _resolve(self.base, item[key])
                if not file.is_file():
                    self.missing.append(str(file))
                elif key == "label":
                    self.label_files.setdefault(split, []).append(file)

    def missing_problem(self) -> list[str]:
        """One message naming the first missing files (none when every file is there)."""
        if not self.missing:
            return []
        shown = "\n    ".join(self.missing[:MISSING_SHOWN])
        more = f"\n    ... and {len(self.missing) - MISSING_SHOWN} more" if len(self.missing) > MISSING_SHOWN else ""
        relative = "the datalist's folder" if self.base is not None else "the folder the run starts in"
        return [
            f"{self.source}: {len(self.missing)} file(s) it names do not exist (paths are relative to {relative}):"
            f"\n    {shown}{more}"
        ]


def check_datalist(
    datalist: str | Path | None,
    splits: Sequence[str],
    class_names: Sequence[str] | None = None,
    *,
    labels: bool = True,
    label_sample: int = 4,
) -> tuple[list[str], dict[str, int]]:
    """Problems of a datalist and of the files it names, and the number of items per checked split.

    Args:
        datalist: MONAI datalist JSON (``training``, ``validation``, ``test`` lists of ``{"image", "label"}``).
        splits: the splits the run reads.
        class_names: the run's classes (background first): compared with the datalist's ``labels`` mapping when
            it has one, else with the largest value of the first ``label_sample`` label maps of each split.
        labels: whether every item needs a ``label`` (not for inference).
        label_sample: label maps read per split when the datalist has no ``labels`` mapping.
    """
    splits = [s for s in splits if s]
    if not splits:
        return [], {}
    if not datalist:
        return [f"no datalist is set, but the run reads the split(s) {', '.join(splits)}."], {}
    path = Path(datalist)
    if not path.is_file():
        return [
            f"datalist not found: {path}. Write one with scsam-prepare (docs/own_data.md) or point --dataset_dir "
            "at the folder that holds datalist.json."
        ], {}
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return [f"{path}: is not a readable JSON datalist ({err})."], {}
    if not isinstance(content, Mapping):
        return [f"{path}: a datalist is a JSON object with training/validation/test lists."], {}
    check = _ItemCheck(str(path), path.parent, labels)
    lists = [k for k, v in content.items() if isinstance(v, list)]
    for split in splits:
        items = content.get(split)
        if items is None:
            check.problems.append(
                f"{path}: has no split '{split}'{suggest(split, lists)} (splits: {', '.join(lists)})."
            )
            continue
        check.add_split(split, items)
    problems = check.problems + check.missing_problem()
    if class_names is not None and labels:
        problems += _check_classes(path, content, class_names, check.label_files, label_sample)
    return problems, check.counts


def check_items(
    data: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    *,
    labels: bool = True,
    label_sample: int = 4,
    source: str = "the items set by an override",
) -> tuple[list[str], dict[str, int]]:
    """Problems of items given to a run without a datalist file, and the number of items per split.

    The rules and messages of :func:`check_datalist`, for lists that reach the run as ``train#dataset#data`` /
    ``validate#dataset#data`` overrides (MONAI Label's ``BundleTrainTask``): every split non-empty, an ``image``
    (and a ``label``) path in every item, every file there (relative paths from the folder the run starts in, as
    the run reads them), label values within ``class_names``.

    Args:
        data: split name -> its items.
        class_names: the run's classes (background first), compared with the largest value of the first
            ``label_sample`` label maps of each split.
        labels: whether every item needs a ``label``.
        label_sample: label maps read per split.
        source: what the messages call the items.
    """
    check = _ItemCheck(source, None, labels)
    for split, items in data.items():
        check.add_split(split, items)
    problems = check.problems + check.missing_problem()
    if class_names is not None and labels:
        problems += _check_label_values(class_names, check.label_files, label_sample)
    return problems, check.counts


def _check_classes(
    path: Path, content: Mapping, class_names: Sequence[str], label_files: dict[str, list[Path]], sample: int
) -> list[str]:
    names = [str(c) for c in class_names]
    listed = content.get("labels")
    if isinstance(listed, Mapping) and listed:
        try:
            theirs = [str(listed[k]) for k in sorted(listed, key=lambda k: int(k))]
        except (TypeError, ValueError):
            theirs = [str(v) for v in listed.values()]
        if len(theirs) != len(names):
            return [
                f"{path}: lists {len(theirs)} label values ({', '.join(theirs)}), but class_names has {len(names)} "
                f'({", ".join(names)}); pass the data set\'s classes, e.g. --class_names "{theirs!r}".'
            ]
        if theirs != names:
            logger.warning("%s names its classes %s, the run %s (same count; the run's are used).", path, theirs, names)
        return []
    return _check_label_values(names, label_files, sample)


def _check_label_values(class_names: Sequence[str], label_files: dict[str, list[Path]], sample: int) -> list[str]:
    """The first ``sample`` label maps of each split hold no value above the number of foreground classes."""
    names = [str(c) for c in class_names]
    problems = []
    for files in label_files.values():
        for file in files[:sample]:
            try:
                label = read_image_2d(file)
            except (DataPreparationError, OSError) as err:
                problems.append(str(err))
                continue
            high = float(label.max())
            if high > len(names) - 1:
                problems.append(
                    f"{file}: holds label value {high:g}, but class_names has {len(names) - 1} foreground classes "
                    f"({', '.join(names)}); pass the data set's classes with --class_names."
                )
                return problems
    return problems
