"""The experiments' datalists: one copy with absolute paths, per-profile caps, subsets and cross-dataset splits."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scsam_monai.atomic import atomic_write_json

__all__ = ["SPLITS", "prepare_datalist", "split_subsets", "cross_dataset_datalists", "class_names_of"]

SPLITS = ("training", "validation", "test")


def _absolute(item: Mapping, base: Path) -> dict:
    out = dict(item)
    for key in ("image", "label"):
        if key in out and isinstance(out[key], str) and not Path(out[key]).is_absolute():
            out[key] = str((base / out[key]).resolve())
    return out


def prepare_datalist(
    source: str | Path, target: str | Path, max_items: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Copy a Decathlon datalist with absolute paths (and at most ``max_items[split]`` items per split).

    Raises:
        ValueError: the datalist lacks a non-empty ``training``, ``validation`` or ``test`` split.
    """
    source = Path(source)
    data = json.loads(source.read_text())
    for split in SPLITS:
        items = data.get(split) or []
        if not items:
            raise ValueError(f"{source}: the experiments need a non-empty {split!r} split (all methods use it).")
        if max_items and split in max_items:
            items = items[: max_items[split]]
        data[split] = [_absolute(i, source.parent) for i in items]
    atomic_write_json(target, data)
    return data


def _subset_of(item: Mapping) -> str | None:
    for key in ("condition", "subset"):
        if item.get(key):
            return str(item[key]).split()[0].lower()
    match = re.match(r"(high|low)(?:[_\-]|$)", Path(str(item.get("cell", ""))).name.lower())
    return match.group(1) if match else None


def split_subsets(data: Mapping[str, Any]) -> dict[str, dict[str, list]]:
    """Group a datalist's items by subset (``condition`` / ``subset`` entry, or a ``cell`` named ``high*``/``low*``).

    Returns:
        ``{subset: {split: items}}`` for the subsets found (empty when the items carry no subset).
    """
    subsets: dict[str, dict[str, list]] = {}
    for split in SPLITS:
        for item in data.get(split) or []:
            name = _subset_of(item)
            if name is not None:
                subsets.setdefault(name, {s: [] for s in SPLITS})[split].append(item)
    return subsets


def cross_dataset_datalists(
    subsets: Mapping[str, Mapping[str, list]], out_dir: str | Path
) -> list[tuple[str, str, Path]]:
    """Datalists training (and validating) on one subset and testing on the other, both directions.

    The test split is the other subset's ``test`` items, or all its items when it has none. Only the first two
    subsets (sorted by name) are paired.

    Returns:
        ``(train subset, test subset, datalist path)`` per direction; empty unless two subsets can train.
    """
    names = sorted(n for n, s in subsets.items() if s["training"] and s["validation"])
    if len(names) < 2:
        return []
    out = []
    for a, b in ((names[0], names[1]), (names[1], names[0])):
        test = subsets[b]["test"] or [i for s in SPLITS for i in subsets[b][s]]
        data = {"training": subsets[a]["training"], "validation": subsets[a]["validation"], "test": test}
        path = Path(out_dir) / f"{a}_to_{b}" / "datalist.json"
        atomic_write_json(path, data)
        out.append((a, b, path))
    return out


def class_names_of(data: Mapping[str, Any]) -> list[str] | None:
    """Class names (background first) from a datalist's ``labels`` entry ``{"0": name, ...}``; None without one."""
    labels = data.get("labels")
    if isinstance(labels, Mapping) and labels:
        try:
            return [str(labels[k]) for k in sorted(labels, key=int)]
        except (TypeError, ValueError):
            return None
    return None
