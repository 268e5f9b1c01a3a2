"""Shared fixtures: the repository root. Shared helper functions (run a bundle or a command as a child process,
a free TCP port, train.yaml's preprocessing, the real EM sample) live in ``tests/helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Two CPU cores on CI: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (``bundle/``, ``scripts/`` and ``apps/`` are under it)."""
    return REPO_ROOT
