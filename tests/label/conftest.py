"""Fixtures of the MONAI Label tests: a studies folder of synthetic EM slices and bad files a client might send."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scsam_monai.data.synthetic import write_synthetic_dataset

IMAGE_SIZE = 96


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """A small synthetic data set (images/ and labels/ of train_*, val_*, test_*)."""
    root = tmp_path_factory.mktemp("label_data")
    write_synthetic_dataset(root, num_train=3, num_val=1, num_test=1, size=IMAGE_SIZE, seed=5)
    return root


def make_studies(synthetic: Path, studies: Path) -> Path:
    """A MONAI Label studies folder: every image at the top, final labels for the train and val images."""
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((synthetic / "images").glob("*.tif")):
        shutil.copyfile(image, studies / image.name)
        if not image.name.startswith("test"):
            shutil.copyfile(synthetic / "labels" / image.name, studies / "labels" / "final" / image.name)
    return studies


def bad_files(folder: Path) -> dict[str, tuple[Path, int]]:
    """Files a client could send, each with the HTTP status the app must answer (415 or 422)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files: dict[str, tuple[Path, int]] = {}

    def add(name: str, status: int, write) -> None:
        path = folder / name
        write(path)
        files[name.split(".")[0]] = (path, status)

    add("random_bytes.tif", 422, lambda p: p.write_bytes(rng.bytes(4096)))
    good = folder / "_good.tif"
    tifffile.imwrite(good, rng.integers(0, 255, (64, 64), dtype=np.uint8))
    add("truncated.tif", 422, lambda p: p.write_bytes(good.read_bytes()[:200]))
    add("four_d.tif", 422, lambda p: tifffile.imwrite(p, rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8)))
    add("rgb.png", 422, lambda p: _write_rgb_png(p, rng))
    nan = rng.random((32, 32), dtype=np.float32)
    nan[3, 4] = np.nan
    add("nan_pixels.tif", 422, lambda p: tifffile.imwrite(p, nan))
    add("empty.tif", 422, lambda p: p.write_bytes(b""))
    add("notes.txt", 415, lambda p: p.write_text("not an image"))
    good.unlink()
    return files


def _write_rgb_png(path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), mode="RGB").save(path)
