"""Checks of the run's settings: the ``head`` switches and ``class_names``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scsam_monai.networks.build import HEAD_KEYS
from scsam_monai.networks.fafm import FUSION_MODES, STREAM_MODES
from scsam_monai.networks.prompt_encoder import PROMPT_MODES
from scsam_monai.startup_checks.errors import suggest

__all__ = ["HEAD_KEYS", "check_head", "check_class_names"]


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


def check_class_names(class_names: Any) -> list[str]:
    """Problems of ``class_names``: a list of unique names, background first and at least one class."""
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        return [f"class_names must be a list such as [background, nucleus, ...], got {class_names!r}."]
    names = [str(c) for c in class_names]
    if len(names) < 2:
        return [f"class_names needs background and at least one class, got {names}."]
    if len(set(names)) != len(names):
        return [f"class_names must be unique, got {names}."]
    return []
