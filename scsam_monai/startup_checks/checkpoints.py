"""Checks of the checkpoint settings against the bundle's ``large_files.yml``.

A missing SAM checkpoint is reported with the file, its expected SHA-256 and URL and the download command; a
listed checkpoint is verified against its SHA-256 (an interrupted or replaced download); a file listed for
another SAM architecture than ``sam_arch`` is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scsam_monai.hashing import sha256_file
from scsam_monai.networks.encoders import SAM_ARCHITECTURES, TEST_ARCHITECTURES
from scsam_monai.startup_checks.errors import ConfigValidationError

__all__ = ["SAM_ARCHS", "read_large_files", "check_checkpoint"]

logger = logging.getLogger(__name__)

SAM_ARCHS = tuple(name for name in SAM_ARCHITECTURES if name not in TEST_ARCHITECTURES)
"""The official SAM architectures, as named in the checkpoint files: those of ``SAM_ARCHITECTURES`` but the
test-only ones (vit_b, vit_l, vit_h)."""


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
