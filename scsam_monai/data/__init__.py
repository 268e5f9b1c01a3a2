"""Data of scsam-monai: readers, preparation of EM volumes, synthetic EM, the embedding cache and its datasets.

Names are imported lazily, so that command-line tools that only read and write files (``scsam-prepare``,
``scsam-synthetic``) start without importing torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmbeddingCache": ".embedding_cache",
    "transform_fingerprint": ".embedding_cache",
    "cached_embedding_dataset": ".embedding_dataset",
    "precompute_embeddings": ".embedding_dataset",
    "open_volume": ".io",
    "DataPreparationError": ".io",
    "prepare_dataset": ".prepare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
