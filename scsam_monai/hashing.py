"""SHA-256 of files, read in chunks: checkpoints (cache keys, large_files.yml checks), downloads, prepared data."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks.

    Args:
        path: file to hash.
        chunk_size: bytes read at a time (1 MiB by default).

    Returns:
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
