"""Data of scsam-monai: embedded synthetic EM, image reading, the embedding cache and its datasets."""

from __future__ import annotations

from .embedding_cache import EmbeddingCache, transform_fingerprint
from .embedding_dataset import cached_embedding_dataset, precompute_embeddings

__all__ = ["EmbeddingCache", "transform_fingerprint", "cached_embedding_dataset", "precompute_embeddings"]
