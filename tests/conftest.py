"""Shared fixtures: the repository root and synthetic data sets. Shared helper functions (run a bundle or a command
as a child process, a free TCP port, train.yaml's preprocessing, the real EM sample, the tiny encoders, a stand-in
model) live in ``tests/helpers.py``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from scsam_monai.synthetic import write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]

# Two CPU cores on CI: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (``bundle/``, ``scripts/`` and ``apps/`` are under it)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Callable[..., Path]:
    """Factory of synthetic data sets (``images/``, ``labels/``, ``datalist.json``) written by
    ``write_synthetic_dataset``, each set of arguments once a session.

    ``synthetic_dataset(dest=None, **sizes)`` takes ``write_synthetic_dataset``'s ``num_train``, ``num_val``,
    ``num_test``, ``size`` and ``seed`` (its defaults where left out) and returns the data set's folder: the
    session's shared one when ``dest`` is None (read it, never write into it), else a private copy at ``dest`` (a
    folder that does not exist yet), for a test that writes there, e.g. a training run's embedding cache
    (``dataset_dir/embedding_cache``) or a changed datalist.
    """
    written: dict[tuple[tuple[str, int], ...], Path] = {}

    def make(dest: str | Path | None = None, **sizes: int) -> Path:
        key = tuple(sorted(sizes.items()))
        if key not in written:
            root = tmp_path_factory.mktemp("synthetic")
            write_synthetic_dataset(root, **sizes)
            written[key] = root
        if dest is None:
            return written[key]
        return Path(shutil.copytree(written[key], dest))

    return make


@pytest.fixture(scope="session")
def trained_demo_bundle(tmp_path_factory, synthetic_dataset) -> tuple[Path, dict, object]:
    """The bundle's ``training`` on the demo profile, run once a session for every test that needs a trained head.

    A small synthetic set (10 training, 3 validation, 2 test slices of 128 pixels) declared to be at 8 nm, 6 short
    epochs of the tiny random-weight encoders. The 128-pixel slices fill the 256-pixel canvas, so the weights record
    a model pixel size of 4 nm. Returns ``(work, overrides, result)``: the folder the run used (``work/data``, the
    outputs in ``work/out``), the overrides it ran with (later runs pass them on) and its completed process. Tests
    read ``work/out/models``; they write their own outputs elsewhere or under names no other test reads.
    """
    from tests.helpers import run_bundle

    work = tmp_path_factory.mktemp("trained_bundle")
    synthetic_dataset(work / "data", num_train=10, num_val=3, num_test=2, size=128, seed=11)  # its embedding cache
    overrides = {
        "dataset_dir": work / "data",
        "output_dir": work / "out",
        "views_per_image": 1,
        "train#batch_size": 2,
        "train#trainer#max_epochs": 6,
        "learning_rate": 0.001,
        "pixel_size": 8,  # nm per pixel of the 128-pixel training slices
    }
    result = run_bundle("training", ["train.yaml", "demo.yaml"], overrides, cwd=work)
    return work, overrides, result
