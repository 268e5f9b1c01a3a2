"""Checks a bundle run makes before it starts: settings, checkpoints, the datalist and its files.

A multi-hour training should stop in its first seconds, with one message that lists every problem, instead of
after the embeddings of half the data set have been computed. :func:`validate_run` is called from the bundle's
``initialize`` list and checks:

- settings: keys of the ``head`` section (a misspelled ``--head#fussion concat`` adds a key nothing reads) and
  its values; when run by ``python -m monai.bundle run``, every key that an overlay file or a command-line
  override sets must be one the bundle knows (or one that the configuration refers to), with the closest known
  key suggested;
- checkpoints: a missing SAM checkpoint is reported with the file, its expected SHA-256 and URL from
  ``large_files.yml`` and the download command; a listed checkpoint is verified against its SHA-256 (an
  interrupted or replaced download); a file listed for another SAM architecture than ``sam_arch`` is refused;
- data: the datalist exists, is valid JSON and has the checked splits, non-empty, with an ``image`` (and a
  ``label``) in every item; every file it names exists (one message lists the missing ones); its class list
  (``labels``), or the largest value of a few label maps, agrees with ``class_names``.

Every problem is collected and raised together as one :class:`ConfigValidationError`.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .hashing import sha256_file

__all__ = [
    "ConfigValidationError",
    "HEAD_KEYS",
    "validate_run",
    "check_head",
    "check_checkpoint",
    "check_datalist",
    "check_config_keys",
    "bundle_command_line",
    "read_large_files",
    "suggest",
]

logger = logging.getLogger(__name__)

HEAD_KEYS = ("fusion", "streams", "residual", "prompts", "num_sparse_tokens")
"""Keys of the bundle's ``head`` section (the switches of ``ScSAMHead``)."""

SAM_ARCHS = ("vit_b", "vit_l", "vit_h")
_SPECIAL_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
_ENTRY_IDS = ("imports", "initialize", "finalize", "run", "_meta_")
_MISSING = 5  # missing files named in a message


class ConfigValidationError(ValueError):
    """The run's configuration or data cannot work; the message lists every problem found."""


def suggest(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- settings ---------------------------------------------------------------------------------------------


def check_head(head: Mapping[str, Any]) -> list[str]:
    """Problems of the ``head`` section: unknown keys (with the closest known key) and invalid values."""
    if not isinstance(head, Mapping):
        return [f"head must be a mapping of {', '.join(HEAD_KEYS)}, got {head!r}."]
    problems = []
    for key in head:
        if key not in HEAD_KEYS:
            problems.append(
                f"head#{key} is not a setting of the head{suggest(key, HEAD_KEYS)}; its settings are "
                f"{', '.join(HEAD_KEYS)}."
            )
    from .networks.fafm import FUSION_MODES, STREAM_MODES
    from .networks.prompt_encoder import PROMPT_MODES

    for key, allowed in (("fusion", FUSION_MODES), ("streams", STREAM_MODES), ("prompts", PROMPT_MODES)):
        if key in head and head[key] not in allowed:
            problems.append(
                f"head#{key} must be one of {', '.join(allowed)}, got {head[key]!r}{suggest(head[key], allowed)}."
            )
    if "residual" in head and not isinstance(head["residual"], bool):
        problems.append(f"head#residual must be true or false, got {head['residual']!r}.")
    tokens = head.get("num_sparse_tokens", 1)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        problems.append(f"head#num_sparse_tokens must be a positive integer, got {tokens!r}.")
    return problems


def _check_class_names(class_names: Any) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        return [f"class_names must be a list such as [background, nucleus, ...], got {class_names!r}."]
    names = [str(c) for c in class_names]
    if len(names) < 2:
        return [f"class_names needs background and at least one class, got {names}."]
    if len(set(names)) != len(names):
        return [f"class_names must be unique, got {names}."]
    return []


# ---- checkpoints ------------------------------------------------------------------------------------------


def read_large_files(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a bundle's ``large_files.yml`` (``path``, ``url``, ``hash_val``, ``hash_type``); [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigValidationError(f"{path}: cannot be read ({err}).") from err
    entries = content.get("large_files", []) if isinstance(content, Mapping) else []
    return [dict(e) for e in entries if isinstance(e, Mapping) and e.get("path")]


def check_checkpoint(
    checkpoint: str | Path | None,
    *,
    kind: str = "SAM",
    arch: str | None = None,
    allow_random_weights: bool = False,
    large_files: str | Path | None = None,
    verify_hash: bool = True,
) -> list[str]:
    """Problems of a checkpoint setting (``sam_checkpoint`` or ``mae_checkpoint``).

    Args:
        checkpoint: the configured file; None or "" for none.
        kind: ``"SAM"`` or ``"MAE"`` (names the setting in messages).
        arch: the configured architecture (``sam_arch``); a file listed in ``large_files.yml`` for another SAM
            architecture is refused.
        allow_random_weights: whether no checkpoint is allowed.
        large_files: the bundle's ``large_files.yml``: expected SHA-256 and URL of each known file.
        verify_hash: compare the file's SHA-256 with its ``large_files.yml`` entry.
    """
    setting = f"{kind.lower()}_checkpoint"
    if not checkpoint:
        if allow_random_weights:
            return []
        return [
            f"{setting} is not set and {kind.lower()}_allow_random_weights is false: the frozen {kind} encoder needs "
            f"a pretrained checkpoint (set --{setting} PATH, or --{kind.lower()}_allow_random_weights true for a "
            "run without pretrained weights, e.g. a smoke test)."
        ]
    path = Path(checkpoint)
    listing = Path(large_files) if large_files else None
    entries = read_large_files(listing) if listing is not None else []
    entry = next((e for e in entries if Path(str(e["path"])).name == path.name), None)
    if not path.is_file():
        message = f"{kind} checkpoint not found: {path}."
        if entry is not None:
            digest = entry.get("hash_val") or "none published"
            message += (
                f" Expected {entry.get('hash_type', 'sha256')} {digest}; download it from {entry.get('url')} into "
                f"{path.parent}, or fetch every checkpoint listed in {listing} with: python -m monai.bundle "
                f"download_large_files --bundle_path {listing.parent}"
            )
        elif kind == "SAM":
            known = ", ".join(Path(str(e["path"])).name for e in entries) or "none"
            message += (
                f" It is not listed in {listing or 'large_files.yml'} (listed: {known}); copy it there, or point "
                f"--{setting} at an existing file."
            )
        else:
            message += (
                " The MAE encoder is written by the bundle's MAE pre-training (bundle/configs/pretrain_mae.yaml); "
                f"point --{setting} at its export, or set --{setting} null to use random MAE weights."
            )
        return [message]
    problems = []
    if kind == "SAM" and arch in SAM_ARCHS and entry is not None:
        listed = [a for a in SAM_ARCHS if a in Path(str(entry["path"])).name]
        if listed and arch not in listed:
            problems.append(
                f"{path} is the {listed[0]} SAM checkpoint but sam_arch is {arch}; set --sam_arch {listed[0]} or "
                f"choose a {arch} checkpoint."
            )
    if verify_hash and entry is not None and entry.get("hash_val"):
        hash_type = str(entry.get("hash_type", "sha256")).lower()
        if hash_type != "sha256":
            logger.warning("%s: large_files.yml gives a %s hash, which is not verified here.", path, hash_type)
        else:
            actual = sha256_file(path)
            if actual != str(entry["hash_val"]).lower():
                problems.append(
                    f"{path}: its SHA-256 is {actual}, but {listing} lists {entry['hash_val']}; the download is "
                    f"incomplete or the file was replaced. Delete it and download it again from {entry.get('url')}."
                )
    elif entry is not None and not entry.get("hash_val"):
        logger.warning("%s: large_files.yml publishes no hash for it, so its integrity is not verified.", path)
    return problems


# ---- data -------------------------------------------------------------------------------------------------


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
        shown = "\n    ".join(missing[:_MISSING])
        more = f"\n    ... and {len(missing) - _MISSING} more" if len(missing) > _MISSING else ""
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
    from .data.imageio import read_image_2d
    from .data.io import DataPreparationError

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


# ---- keys of overlays and command-line overrides ------------------------------------------------------------


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
        if "." in target:
            import pydoc

            component = pydoc.locate(target)
        else:
            from monai.bundle import ComponentLocator

            module = ComponentLocator().get_component_module_name(target)
            module = module[0] if isinstance(module, list) else module
            component = getattr(sys.modules.get(module) or __import__(module, fromlist=[target]), target, None)
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


def _merged(config: Mapping, content: Mapping) -> dict:
    """``config`` with a file's ``content`` merged in, as MONAI merges config files."""
    import copy

    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    parser = ConfigParser(config=copy.deepcopy(dict(config)))
    for key, value in content.items():
        try:
            merge_kv(parser, key, value)
        except Exception:  # noqa: BLE001 - a key MONAI could not merge either; reported by MONAI, not here
            continue
    return parser.get()


def check_config_keys(
    config_files: Sequence[str | Path],
    overrides: Mapping[str, Any] | Sequence[str] = (),
    *,
    run_id: str | None = None,
    bundle_configs: str | Path | None = None,
) -> list[str]:
    """Problems of the keys that overlay files and command-line overrides set.

    The bundle's own files (those in ``bundle_configs``, by default the folder of the first config file) define
    the known settings. Every key that another config file or an override sets must exist there, unless it is
    a new top-level key that the configuration refers to (a helper value of an overlay), a new argument that
    a ``_target_`` component accepts, or a new entry of a plain mapping that resembles none of its keys.

    Args:
        config_files: the run's config files, in order.
        overrides: the ids set on the command line (``train#trainer#max_epochs``, ...).
        run_id: the run's entry id (``training``), which counts as referred to.
        bundle_configs: folder of the bundle's own config files.
    """
    from monai.bundle import ConfigParser

    files = [Path(f) for f in config_files]
    if not files:
        return []
    ours_dir = Path(bundle_configs).resolve() if bundle_configs else files[0].resolve().parent
    ours = [f for f in files if f.resolve().parent == ours_dir]
    theirs = [f for f in files if f.resolve().parent != ours_dir]
    known = ConfigParser.load_config_files([str(f) for f in ours]) if ours else {}
    merged = ConfigParser.load_config_files([str(f) for f in files])
    references = _references(merged)
    entries = set(_ENTRY_IDS) | ({run_id} if run_id else set())
    problems = []
    for file in theirs:
        content = ConfigParser.load_config_file(str(file)) or {}
        # a section the file adds itself (``checks: {...}`` and then ``checks#splits: ...``) is known to it
        sections = {_split_id(k)[0] for k in content if len(_split_id(k)) > 1}
        added = {k: v for k, v in content.items() if k in sections and k not in known}
        for key in content:
            nested = len(_split_id(key)) > 1
            problem = _check_id(str(key), str(file), {**known, **added} if nested else known, references, entries)
            if problem:
                problems.append(problem)
        known = _merged(known, content)
    for key in overrides:
        problem = _check_id(str(key), "command line", merged, references, entries)
        if problem:
            problems.append(problem)
    return problems


def bundle_command_line(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The config files, overrides and run id of a ``python -m monai.bundle run`` command line, else None.

    Args:
        argv: the command line; ``sys.argv`` by default.

    Returns:
        ``{"config_file": [...], "overrides": {id: value}, "run_id": str | None}``, or None when ``argv`` is not
        a ``monai.bundle run`` command.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] != "run" or not str(argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return None
    from monai.bundle import ConfigWorkflow, scripts

    reserved = set(inspect.signature(scripts.run).parameters) | set(inspect.signature(ConfigWorkflow).parameters)
    reserved -= {"override", "self"}
    args: dict[str, Any] = {}
    positional: list[str] = []
    tokens = argv[2:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            positional.append(token)
            i += 1
            continue
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                value = "True"
        if name.replace("-", "_") in reserved:
            name = name.replace("-", "_")
        args[name] = value
        i += 1
    if "args_file" in args:
        from monai.bundle import ConfigParser

        args = {**{k: str(v) for k, v in ConfigParser.load_config_file(args["args_file"]).items()}, **args}
    config_file = _parse_value(args.get("config_file"))
    if isinstance(config_file, str):
        split = "," in config_file and not Path(config_file).is_file()
        config_file = config_file.split(",") if split else [config_file]
    return {
        "config_file": [str(f) for f in (config_file or [])],
        "overrides": {k: v for k, v in args.items() if k not in reserved},
        "run_id": args.get("run_id") or (positional[0] if positional else None),
    }


def _parse_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        from fire.parser import DefaultParseValue

        return DefaultParseValue(value)
    except Exception:  # noqa: BLE001 - fire missing or a value it cannot parse: Python literal or the text
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value


# ---- the run ----------------------------------------------------------------------------------------------


def validate_run(
    *,
    class_names: Sequence[str],
    head: Mapping[str, Any] | None = None,
    datalist: str | Path | None = None,
    splits: Sequence[str] = ("training", "validation"),
    labels: bool = True,
    sam_arch: str | None = None,
    sam_checkpoint: str | Path | None = None,
    sam_allow_random_weights: bool = False,
    mae_checkpoint: str | Path | None = None,
    mae_allow_random_weights: bool = True,
    head_checkpoint: str | Path | None = None,
    large_files: str | Path | None = None,
    verify_hashes: bool = True,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check a run's settings, checkpoints and data before it starts; raise one error listing every problem.

    Called from the bundle's ``initialize`` list. When the process is ``python -m monai.bundle run``, the keys
    set by overlay files and command-line overrides are checked as well (:func:`check_config_keys`).

    Args:
        class_names: the run's classes, background first.
        head: the ``head`` section.
        datalist: the datalist JSON.
        splits: the datalist splits the run reads (none for inference on a folder).
        labels: whether the items need label maps (not for inference).
        sam_arch: the SAM architecture.
        sam_checkpoint: the SAM checkpoint (None: random weights, if allowed).
        sam_allow_random_weights: whether the SAM encoder may use random weights.
        mae_checkpoint: the MAE encoder checkpoint (None: random weights, if allowed).
        mae_allow_random_weights: whether the MAE encoder may use random weights.
        head_checkpoint: the trained head the run loads (evaluation, inference); None when it trains one.
        large_files: the bundle's ``large_files.yml`` (expected hashes and URLs of the checkpoints).
        verify_hashes: verify listed checkpoints against their SHA-256 (reads the whole file once).
        argv: the command line to check; ``sys.argv`` by default.

    Returns:
        What was checked: ``{"items": {split: count}, "keys_checked": bool}``.

    Raises:
        ConfigValidationError: with one line per problem.
    """
    problems = _check_class_names(class_names)
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
    names = class_names if not _check_class_names(class_names) else None
    data_problems, counts = check_datalist(datalist, splits, names, labels=labels)
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
