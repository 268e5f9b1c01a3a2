"""Loading trained head weights safely."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["load_head_weights"]


def load_head_weights(head: nn.Module, path: str | Path) -> None:
    """Load a trained ``ScSAMHead`` state from ``path`` with ``torch.load(weights_only=True)``.

    Accepts a plain state dict (what MONAI's ``CheckpointSaver`` writes for one object) or a dict holding it
    under ``network``, ``model`` or ``state_dict``.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when it is unreadable or its weights do not fit the head.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trained head checkpoint not found (train the bundle first).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors of many kinds become one message
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({err}).") from err
    for key in ("network", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit this head configuration: {err}") from err
