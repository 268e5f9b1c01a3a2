"""Checks of the datalist: it exists, is valid JSON, has the splits the run reads with an ``image`` (and a
``label``) in every item; every file it names exists (one message lists the missing ones); its class list
(``labels``), or the largest value of a few label maps, agrees with ``class_names``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.readers import DataPreparationError, read_image_2d
from .errors import suggest

__all__ = ["check_datalist"]

logger = logging.getLogger(__name__)

MISSING_SHOWN = 5
"""Missing files named in a message."""


def _resolve(base: Path, value: str) -> Path:
    """A datalist path as ``monai.data.load_decathlon_datalist`` resolves it (relative to the datalist)."""
    return Path(os.path.normpath(os.path.join(base, value)))


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
    problems: list[str] = []
    counts: dict[str, int] = {}
    missing: list[str] = []
    label_files: dict[str, list[Path]] = {}
    lists = [k for k, v in content.items() if isinstance(v, list)]
    for split in splits:
        items = content.get(split)
        if items is None:
            problems.append(f"{path}: has no split '{split}'{suggest(split, lists)} (splits: {', '.join(lists)}).")
            continue
        if not isinstance(items, list) or not items:
            problems.append(f"{path}: the split '{split}' is empty; it needs at least one image.")
            continue
        counts[split] = len(items)
        for n, item in enumerate(items):
            keys = ("image", "label") if labels else ("image",)
            if not isinstance(item, Mapping) or any(not isinstance(item.get(k), str) for k in keys):
                problems.append(f"{path}: item {n} of '{split}' needs {' and '.join(keys)} paths, got {item!r}.")
                continue
            for key in keys:
                file = _resolve(path.parent, item[key])
                if not file.is_file():
                    missing.append(str(file))
                elif key == "label":
                    label_files.setdefault(split, []).append(file)
    if missing:
        shown = "\n    ".join(missing[:MISSING_SHOWN])
        more = f"\n    ... and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        problems.append(
            f"{path}: {len(missing)} file(s) it names do not exist (paths are relative to the datalist's "
            f"folder):\n    {shown}{more}"
        )
    if class_names is not None and labels:
        problems += _check_classes(path, content, class_names, label_files, label_sample)
    return problems, counts


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
