"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename into place.

A crash or Ctrl-C leaves either the old file or the new one, never a truncated file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_save_npy", "atomic_save_figure"]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it to ``path`` when it succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda h: h.write(text.encode("utf-8")))


def _strict_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return _strict_json(value.item())
    return value


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write strict JSON atomically: NaN and infinities (undefined scores) become ``null``."""
    return atomic_write_text(path, json.dumps(_strict_json(data), indent=2, allow_nan=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Save a .npy file (no pickles) atomically."""
    return atomic_write(path, lambda h: np.save(h, np.ascontiguousarray(array), allow_pickle=False))


def atomic_save_figure(path: str | Path, figure: Any, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    savefig_kwargs.setdefault("dpi", 120)
    return atomic_write(path, lambda h: figure.savefig(h, format="png", **savefig_kwargs))
