"""The start-up check of a bundle run: every check of this package, one error listing every problem."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scsam_monai.startup_checks.checkpoints import check_checkpoint
from scsam_monai.startup_checks.config_keys import bundle_command_line, check_config_keys
from scsam_monai.startup_checks.datalist import DatalistSplit, check_datalist, check_items
from scsam_monai.startup_checks.errors import ConfigValidationError, boolean_word_hint
from scsam_monai.startup_checks.settings import check_class_names, check_head

__all__ = ["validate_run", "check_data", "check_flags", "check_input", "require_input"]

logger = logging.getLogger(__name__)

OVERRIDE_SOURCE = "the items set by an override (train#dataset#data / validate#dataset#data)"
"""What the messages call items that reach a run without a datalist file (MONAI Label's ``BundleTrainTask``)."""


def validate_run(
    *,
    class_names: Sequence[str],
    head: Mapping[str, Any] | None = None,
    datalist: str | Path | None = None,
    splits: Sequence[str] = ("training", "validation"),
    data: Mapping[str, Any] | None = None,
    labels: bool = True,
    sam_arch: str | None = None,
    sam_checkpoint: str | Path | None = None,
    sam_allow_random_weights: bool = False,
    mae_checkpoint: str | Path | None = None,
    mae_allow_random_weights: bool = True,
    head_checkpoint: str | Path | None = None,
    large_files: str | Path | None = None,
    verify_hashes: bool = True,
    flags: Mapping[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check a run's settings, checkpoints and data before it starts; raise one error listing every problem.

    Called from the bundle's ``initialize`` list. When the process is ``python -m monai.bundle run``, the keys
    set by overlay files and command-line overrides are checked as well (:func:`check_config_keys`).

    Args:
        class_names: the run's classes, background first.
        head: the ``head`` section.
        datalist: the datalist JSON.
        splits: the splits the run reads (none for inference on a folder).
        data: split -> the items the run really reads for it, when the configuration knows them (``train.yaml``:
            ``train#dataset#data``, ``validate#dataset#data``); see :func:`check_data`. Splits it leaves out are
            read from ``datalist``.
        labels: whether the items need label maps (not for inference).
        sam_arch: the SAM architecture.
        sam_checkpoint: the SAM checkpoint (None: random weights, if allowed).
        sam_allow_random_weights: whether the SAM encoder may use random weights.
        mae_checkpoint: the MAE encoder checkpoint (None: random weights, if allowed).
        mae_allow_random_weights: whether the MAE encoder may use random weights.
        head_checkpoint: the trained head the run loads (evaluation, inference); None when it trains one.
        large_files: the bundle's ``large_files.yml`` (expected hashes and URLs of the checkpoints).
        verify_hashes: verify listed checkpoints against their SHA-256 (reads the whole file once).
        flags: settings that must be booleans, by name (``amp``): ``python -m monai.bundle run ... --amp false``
            passes the string "false", which a trainer reads as true (:func:`check_flags`).
        argv: the command line to check; ``sys.argv`` by default.

    Returns:
        What was checked: ``{"items": {split: count}, "keys_checked": bool}``.

    Raises:
        ConfigValidationError: with one line per problem.
    """
    problems = check_class_names(class_names)
    head_problems = check_head(head) if head is not None else []
    keys_checked = False
    command = None
    try:
        command = bundle_command_line(argv)
    except Exception as err:  # noqa: BLE001 - an unusual command line is not a reason to refuse the run
        logger.warning("could not read the command line to check its overrides (%s: %s).", type(err).__name__, err)
    if command is not None and command["config_file"]:
        try:
            key_problems = check_config_keys(command["config_file"], command["overrides"], run_id=command["run_id"])
            keys_checked = True
            # an unknown head key set by an overlay or override is reported once, with where it was set
            reported = {p.split(" ", 1)[0] for p in key_problems}
            head_problems = [p for p in head_problems if p.split(" ", 1)[0] not in reported]
            problems += key_problems
        except Exception as err:  # noqa: BLE001 - same: the files were read by MONAI already
            logger.warning("could not check the keys of the config files (%s: %s).", type(err).__name__, err)
    problems += head_problems
    problems += check_flags(flags or {})
    problems += check_checkpoint(
        sam_checkpoint,
        kind="SAM",
        arch=sam_arch,
        allow_random_weights=sam_allow_random_weights,
        large_files=large_files,
        verify_hash=verify_hashes,
    )
    problems += check_checkpoint(
        mae_checkpoint, kind="MAE", allow_random_weights=mae_allow_random_weights, large_files=large_files
    )
    if head_checkpoint and not Path(head_checkpoint).is_file():
        problems.append(f"trained head checkpoint not found: {head_checkpoint} (train first, or set --ckpt_dir).")
    names = class_names if not check_class_names(class_names) else None
    data_problems, counts = check_data(datalist, splits, data, names, labels=labels)
    problems += data_problems
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigValidationError(f"the run cannot start, {len(problems)} problem(s) found:\n{lines}")
    logger.info(
        "Run checked: %s; classes %s; %s.",
        ", ".join(f"{s} {n} items" for s, n in counts.items()) or "no datalist split",
        list(class_names),
        "overlay and override keys checked" if keys_checked else "keys of the command line not checked",
    )
    return {"items": counts, "keys_checked": keys_checked}


def check_flags(flags: Mapping[str, Any]) -> list[str]:
    """Problems of settings that must be booleans: one line per value that is not ``True`` or ``False``."""
    problems = []
    for name, value in flags.items():
        if isinstance(value, bool):
            continue
        problems.append(f"{name} must be true or false, got {value!r}{boolean_word_hint(name, value)}.")
    return problems


def check_data(
    datalist: str | Path | None,
    splits: Sequence[str],
    data: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    labels: bool = True,
) -> tuple[list[str], dict[str, int]]:
    """Problems of the items each split of a run reads, wherever they come from, and their number per split.

    A run reads a split's items either from its datalist file (``train.yaml``'s default: ``read_split`` of the
    ``datalist``, a :class:`~scsam_monai.startup_checks.datalist.DatalistSplit`) or as a list that an override set
    (MONAI Label's ``BundleTrainTask`` passes its datastore's items as ``train#dataset#data`` and
    ``validate#dataset#data``; the run then never opens the datalist file, which need not exist). Items from a
    file are checked with the file (:func:`check_datalist`: its problems named with its path, its class list),
    other lists item by item (:func:`check_items`), with the same rules and messages.

    Args:
        datalist: the datalist JSON, for the splits that ``data`` leaves out.
        splits: the splits the run reads; items of other splits in ``data`` are not checked.
        data: split -> the items the run reads for it.
        class_names: the run's classes, background first (None: not compared).
        labels: whether the items need label maps.
    """
    data = data or {}
    from_files: dict[str, list[str]] = {}  # datalist file -> its splits the run reads
    overridden: dict[str, Any] = {}
    for split in (s for s in splits if s):
        items = data.get(split)
        if split not in data or items is None:
            from_files.setdefault(str(datalist or ""), []).append(split)
        elif isinstance(items, DatalistSplit):
            from_files.setdefault(str(items.datalist), []).append(items.split)
        else:
            overridden[split] = items
    problems: list[str] = []
    counts: dict[str, int] = {}
    for file, file_splits in from_files.items():
        found, n = check_datalist(file or None, file_splits, class_names, labels=labels)
        problems += found
        counts.update(n)
    if overridden:
        found, n = check_items(overridden, class_names, labels=labels, source=OVERRIDE_SOURCE)
        problems += found
        counts.update(n)
    ordered = {s: counts[s] for s in splits if s in counts}
    return problems, {**ordered, **counts}


def check_input(input_path: str | Path | None) -> list[str]:
    """Problems of inference's ``input``: unset, or a local path (not a glob or URL) that does not exist."""
    if input_path is None or str(input_path) == "":
        return [
            "nothing to segment: set --input PATH (an image, a stack, a container or a folder) or --infer_split "
            "SPLIT (a split of the datalist)."
        ]
    text = str(input_path)
    if "://" not in text and not any(c in text for c in "*?[") and not Path(text).exists():
        return [f"input not found: {text} (--input names an image, a stack, a container or a folder)."]
    return []


def require_input(input_path: str | Path | None, split: str | None = None) -> None:
    """Inference's first step: stop with a clear error unless ``split`` or an existing ``input_path`` is named
    (a named ``input_path`` wins over ``split`` and must exist).

    Raises:
        ConfigValidationError: nothing to segment, or the input does not exist.
    """
    problems = check_input(input_path) if input_path is not None or not split else []
    if problems:
        raise ConfigValidationError(f"the inference cannot start: {problems[0]}")
