"""Embedding-cache read throughput to the training device: float32 vs float16 embeddings, 2 vs 8 workers.

Usage: python -m benchmarks.cache_read OUT.json [--images 128] [--batch 32]
Writes images/s per (workers, dtype), measured in one run on the same random cache entries (SAM 256x64x64 and
MAE 512x64x64 float16, a 1024x1024 label), through the bundle's dataset, a DataLoader with pinned memory on CUDA
and ``EmbeddingBatch`` (the host-to-device copy and the float32 conversion included). Figures:
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from scsam_monai.data.embedding_cache import EmbeddingCache
from scsam_monai.data.embedding_dataset import cached_embedding_dataset
from scsam_monai.engines.batch import EmbeddingBatch


def write_cache(root: Path, images: int) -> list[dict]:
    """Random cache entries shaped like the real ones; records as ``precompute_embeddings`` returns them."""
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(root)
    records = []
    for i in range(images):
        image_hash, record = f"{i:064x}", {}
        for key, channels in (("sam", 256), ("mae", 512)):
            path = cache.embedding_path(f"bench-{key}", image_hash, "v0")
            cache.save_embedding(path, rng.standard_normal((channels, 64, 64), dtype=np.float32))
            record[key] = str(path)
        path = cache.label_path(image_hash, "v0")
        cache.save_label(path, rng.integers(0, 4, (1, 1024, 1024)))
        record["label"] = str(path)
        records.append(record)
    return records


def images_per_second(records: list[dict], dtype: torch.dtype, workers: int, batch: int, device: torch.device) -> float:
    """Median images/s of three timed passes after one warm-up pass."""
    dataset = cached_embedding_dataset(records, mask_grid=256, embedding_dtype=dtype)
    loader = DataLoader(
        dataset, batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=True
    )
    prepare = EmbeddingBatch()
    seconds = []
    for _ in range(4):
        start = time.perf_counter()
        for item in loader:
            prepare(item, device, True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return len(records) / float(np.median(seconds[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file to write")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory(prefix="scsam-cache-read-") as root:
        records = write_cache(Path(root), args.images)
        for workers in (2, 8):
            for dtype in (torch.float32, torch.float16):
                key = f"workers{workers}_{str(dtype).removeprefix('torch.')}"
                results[key] = images_per_second(records, dtype, workers, args.batch, device)
                print(f"{key}: {results[key]:.1f} images/s", flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
