"""SHA-256 of files, read in chunks: checkpoints (cache keys, large_files.yml checks), downloads, prepared data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["sha256_file"]

# digests of files this process hashed already, by (path, size, modification time): a 2.5 GB SAM ViT-H checkpoint
# is hashed once per run, although the start-up check and the encoder's cache key both ask for its digest
_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks; a file this process hashed before (same size and mtime) is not read again.

    Args:
        path: file to hash.
        chunk_size: bytes read at a time (1 MiB by default).

    Returns:
        The hexadecimal digest.
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(chunk_size), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
