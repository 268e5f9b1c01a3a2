"""Embedding cache: the frozen encoders run once per image view, the head trains on stored embeddings.

Layout: ``root/<encoder key>/<image hash>/<view id>.npy``, with labels of augmented views under
``root/labels/...``. The encoder key names the architecture and the SHA-256 of its checkpoint (or its
random seed); the image hash is the SHA-256 of the preprocessed pixels (so it covers the intensity
normalisation); the view id names the view index, the seed and a fingerprint of the augmentation.
Embeddings are stored in fp16 and read memory-mapped; every file is written to a temporary name and renamed
into place, so an interrupted run never leaves a truncated entry that looks valid.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scsam_monai.atomic import atomic_save_npy

__all__ = ["EmbeddingCache", "array_sha256", "transform_fingerprint"]


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (the image content hash of the cache key)."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def transform_fingerprint(transform: Callable, seed: int = 12345) -> str:
    """A short hash of what a random dict transform does to ``image``/``label``, measured on a fixed probe.

    The transform is seeded, applied to a fixed random probe image and label map, and its outputs are hashed.
    Changing a crop scale, a resize mode or the order of transforms changes the outputs and so the cache key:
    cached views of another augmentation are never reused. (Hashing the transforms' attributes does not work:
    MONAI transforms keep per-call state such as the last crop size.)
    """
    from monai.transforms import Compose, Randomizable

    def seed_all(t: object) -> None:
        if isinstance(t, Randomizable):
            t.set_random_state(seed=seed)
        if isinstance(t, Compose):
            for child in t.transforms:
                seed_all(child)

    rng = np.random.default_rng(seed)
    probe = {
        "image": torch.from_numpy(rng.random((1, 48, 64), dtype=np.float32)),
        "label": torch.from_numpy(rng.integers(0, 4, (1, 48, 64)).astype(np.float32)),
    }
    seed_all(transform)
    out = transform(probe)
    digest = hashlib.sha256()
    for key in ("image", "label"):
        array = np.asarray(out[key].detach().cpu() if isinstance(out[key], torch.Tensor) else out[key], np.float32)
        digest.update(array_sha256(np.round(array, 4)).encode())
    return digest.hexdigest()[:12]


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


class EmbeddingCache:
    """Folder of cached embeddings and view labels.

    Args:
        root: cache folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def embedding_path(self, encoder_key: str, image_hash: str, view_id: str) -> Path:
        """Path of the embedding of one image view by one encoder."""
        return self.root / _safe_name(encoder_key) / image_hash[:32] / f"{_safe_name(view_id)}.npy"

    def label_path(self, image_hash: str, view_id: str) -> Path:
        """Path of the label map of one image view (encoder independent)."""
        return self.root / "labels" / image_hash[:32] / f"{_safe_name(view_id)}.npy"

    @staticmethod
    def is_valid(path: Path, shape: tuple[int, ...] | None = None) -> bool:
        """Whether ``path`` holds a readable .npy array (of ``shape`` when given)."""
        if not path.is_file():
            return False
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        return shape is None or tuple(array.shape) == tuple(shape)

    @staticmethod
    def save_embedding(path: Path, embedding: np.ndarray) -> None:
        """Store an embedding in fp16, atomically."""
        atomic_save_npy(path, embedding.astype(np.float16))

    @staticmethod
    def save_label(path: Path, label: np.ndarray) -> None:
        """Store a label map in the smallest unsigned dtype that holds it, atomically."""
        dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
        atomic_save_npy(path, label.astype(dtype))
