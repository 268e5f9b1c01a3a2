"""Checks of the keys that overlay files and command-line overrides set.

``python -m monai.bundle run`` accepts any id: a misspelled ``--train#trainer#max_epoch 3`` or an overlay's
``views_per_imag: 2`` adds a key that nothing reads, and the run silently uses the default. Every key that an
overlay file or an override sets must be one the bundle knows (or one that the configuration refers to), with
the closest known key suggested. The command line is read with ``fire`` and ``monai.bundle.scripts``, as MONAI
reads it; the files are merged by MONAI's ``ConfigParser``.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scsam_monai.networks.build import HEAD_KEYS
from scsam_monai.startup_checks.errors import suggest

__all__ = ["check_config_keys", "bundle_command_line"]

_SPECIAL_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
_ENTRY_IDS = ("imports", "initialize", "finalize", "run", "_meta_")


def _split_id(key: str) -> list[str]:
    return [p for p in str(key).lstrip("+").replace("::", "#").split("#") if p != ""]


def _references(config: Any) -> set[str]:
    """Top-level ids referred to by ``@id`` or ``%id`` anywhere in ``config``."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            for match in re.finditer(r"[@%]([A-Za-z_][\w]*)", node):
                found.add(match.group(1))

    walk(config)
    return found


def _target_parameters(target: Any) -> list[str] | None:
    """Keyword names a ``_target_`` accepts, or None when unknown or open (``**kwargs``)."""
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    try:
        import pydoc

        from monai.bundle import ConfigComponent

        # the full path as MONAI resolves it when it instantiates the component (short names: its locator)
        component = pydoc.locate(ConfigComponent({"_target_": target}).resolve_module_name())
        if component is None:
            return None
        parameters = inspect.signature(component).parameters.values()
    except Exception:  # noqa: BLE001 - an unresolvable target is MONAI's to report when it instantiates it
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _check_id(key: str, source: str, known: Mapping, references: set[str], entries: set[str]) -> str | None:
    parts = _split_id(key)
    node: Any = known
    for depth, part in enumerate(parts):
        if isinstance(node, list):
            if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                node = node[int(part)]
                continue
            return None  # appending to a list
        if not isinstance(node, Mapping):
            return None  # a value inside a scalar or an expression: MONAI reports it
        if part in node:
            node = node[part]
            continue
        where = "#".join(parts[:depth]) or "the configuration"
        if depth < len(parts) - 1:
            return f"{key} ({source}): there is no '{part}' in {where}{suggest(part, list(node))}."
        if depth == 0:
            if part in references or part in entries or part.startswith("_"):
                return None
            return (
                f"{key} ({source}) is not a setting of this bundle and nothing refers to it{suggest(part, list(node))}."
            )
        if parts[:depth] == ["head"]:
            return f"head#{part} ({source}) is not a setting of the head{suggest(part, HEAD_KEYS)}."
        if part in _SPECIAL_KEYS:
            return None
        if "_target_" in node:
            accepted = _target_parameters(node["_target_"])
            if accepted is None or part in accepted:
                return None
            listed = ", ".join(accepted[:12]) + (", ..." if len(accepted) > 12 else "")
            target = node["_target_"]
            return f"{key} ({source}): {target} has no argument '{part}'{suggest(part, accepted)}; it takes {listed}."
        close = suggest(part, [str(k) for k in node], cutoff=0.8)
        return f"{key} ({source}) is not a setting of {where}{close}." if close else None
    return None


def check_config_keys(
    config_files: Sequence[str | Path],
    overrides: Mapping[str, Any] | Sequence[str] = (),
    *,
    run_id: str | None = None,
    bundle_configs: str | Path | None = None,
) -> list[str]:
    """Problems of the keys that overlay files and command-line overrides set.

    The bundle's own files (those in ``bundle_configs`` and its subfolders, by default the folder of the first
    config file: ``train.yaml``, its overlays and ``experiments/``) define the known settings. Every key that
    another config file or an override sets must exist there, unless it is a new top-level key that the
    configuration refers to (a helper value of an overlay), a new argument that a ``_target_`` component
    accepts, or a new entry of a plain mapping that resembles none of its keys. Each other file is checked
    against the bundle's files merged with the other files before it (MONAI's merge).

    Args:
        config_files: the run's config files, in order.
        overrides: the ids set on the command line (``train#trainer#max_epochs``, ...).
        run_id: the run's entry id (``training``), which counts as referred to.
        bundle_configs: folder of the bundle's own config files (subfolders included).
    """
    from monai.bundle import ConfigParser

    files = [Path(f) for f in config_files]
    if not files:
        return []
    ours_dir = Path(bundle_configs).resolve() if bundle_configs else files[0].resolve().parent
    ours = [str(f) for f in files if f.resolve().is_relative_to(ours_dir)]
    theirs = [f for f in files if not f.resolve().is_relative_to(ours_dir)]
    merged = ConfigParser.load_config_files([str(f) for f in files])
    references = _references(merged)
    entries = set(_ENTRY_IDS) | ({run_id} if run_id else set())
    problems = []
    for n, file in enumerate(theirs):
        known = ConfigParser.load_config_files(ours + [str(f) for f in theirs[:n]]) if ours or n else {}
        content = ConfigParser.load_config_file(str(file)) or {}
        # a section the file adds itself (``checks: {...}`` and then ``checks#splits: ...``) is known to it
        sections = {_split_id(k)[0] for k in content if len(_split_id(k)) > 1}
        added = {k: v for k, v in content.items() if k in sections and k not in known}
        for key in content:
            nested = len(_split_id(key)) > 1
            problem = _check_id(str(key), str(file), {**known, **added} if nested else known, references, entries)
            if problem:
                problems.append(problem)
    for key in overrides:
        problem = _check_id(str(key), "command line", merged, references, entries)
        if problem:
            problems.append(problem)
    return problems


def bundle_command_line(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The config files, overrides and run id of a ``python -m monai.bundle run`` command line, else None.

    The arguments are read by ``fire`` against the signature of ``monai.bundle.scripts.run`` and an ``args_file``
    merged by ``monai.bundle.scripts.update_kwargs``: exactly as MONAI reads them.

    Args:
        argv: the command line; ``sys.argv`` by default.

    Returns:
        ``{"config_file": [...], "overrides": {id: value}, "run_id": str | None}``, or None when ``argv`` is not
        a ``monai.bundle run`` command.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] != "run" or not str(argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return None
    import fire
    from monai.bundle import ConfigWorkflow, scripts

    signature = inspect.signature(scripts.run)
    called: dict[str, Any] = {}

    @functools.wraps(scripts.run)
    def capture(*args: Any, **kwargs: Any) -> None:
        called.update(signature.bind(*args, **kwargs).arguments)

    fire.Fire(capture, command=argv[2:], name="run")
    arguments = {**{k: v for k, v in called.items() if k != "override"}, **called.get("override", {})}
    args_file = arguments.pop("args_file", None)
    if args_file:
        arguments = scripts.update_kwargs(args=args_file, **{k: v for k, v in arguments.items() if v is not None})
    reserved = (set(signature.parameters) | set(inspect.signature(ConfigWorkflow).parameters)) - {"override", "self"}
    config_file = arguments.get("config_file")
    if isinstance(config_file, str):
        split = "," in config_file and not Path(config_file).is_file()
        config_file = config_file.split(",") if split else [config_file]
    return {
        "config_file": [str(f) for f in (config_file or [])],
        "overrides": {k: v for k, v in arguments.items() if k not in reserved},
        "run_id": arguments.get("run_id"),
    }
