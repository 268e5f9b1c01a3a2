"""Shared fixtures: the repository root and synthetic data sets. Shared helper functions (run a bundle or a command
as a child process, a free TCP port, train.yaml's preprocessing, the real EM sample, the tiny encoders, a stand-in
model) live in ``tests/helpers.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

# Torch threads per test process: the machine's cores shared among pytest-xdist's workers (one each on CI's 2 cores),
# so that parallel workers do not oversubscribe the cores. Set before torch is imported; child processes inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402

from scsam_monai.synthetic import write_synthetic_dataset  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files with slow tests first: pytest-xdist's ``--dist loadfile`` (``pyproject.toml``'s addopts) hands
    whole files to its workers in this order, so no long file starts last while the other worker idles. A stable
    sort: tests keep their order within a file."""
    slow_files = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in slow_files)


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
def trained_demo_bundle(tmp_path_factory, synthetic_dataset, worker_id) -> tuple[Path, dict, object]:
    """The bundle's ``training`` on the demo profile, run once a session for every test that needs a trained head.

    A small synthetic set (10 training, 3 validation, 2 test slices of 128 pixels) declared to be at 8 nm, 6 short
    epochs of the tiny random-weight encoders. The 128-pixel slices fill the 256-pixel canvas, so the weights record
    a model pixel size of 4 nm. Returns ``(work, overrides, result)``: the folder the run used (``work/data``, the
    outputs in ``work/out``), the overrides it ran with (later runs pass them on) and its completed process. Tests
    read ``work/out/models``; they write their own outputs elsewhere or under names no other test reads.

    pytest-xdist's workers share the one training: the first worker to need it runs it in the run's common
    temporary folder, under a file lock; the others wait for it and read its saved result.
    """
    from filelock import FileLock

    from tests.helpers import run_bundle

    shared = tmp_path_factory.getbasetemp().parent if worker_id != "master" else tmp_path_factory.mktemp("shared")
    work = shared / "trained_bundle"
    overrides = {
        "dataset_dir": work / "data",
        "output_dir": work / "out",
        "views_per_image": 1,
        "train#batch_size": 2,
        "train#trainer#max_epochs": 6,
        "learning_rate": 0.001,
        "pixel_size": 8,  # nm per pixel of the 128-pixel training slices
    }
    record = shared / "trained_bundle.json"
    with FileLock(str(shared / "trained_bundle.lock")):
        if not record.exists():
            synthetic_dataset(work / "data", num_train=10, num_val=3, num_test=2, size=128, seed=11)  # its cache
            done = run_bundle("training", ["train.yaml", "demo.yaml"], overrides, cwd=work)
            saved = {"args": [str(a) for a in done.args], "returncode": done.returncode}
            record.write_text(json.dumps({**saved, "stdout": done.stdout, "stderr": done.stderr}))
    saved = json.loads(record.read_text())
    result = subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"], saved["stderr"])
    return work, overrides, result
