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
