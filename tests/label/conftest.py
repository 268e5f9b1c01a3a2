"""Fixtures of the MONAI Label tests: a studies folder of synthetic EM slices and bad files a client might send."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers import free_port

IMAGE_SIZE = 96


@pytest.fixture(scope="session")
def synthetic(synthetic_dataset) -> Path:
    """A small synthetic data set (images/ and labels/ of train_*, val_*, test_*) from the shared factory: read it,
    never write into it."""
    return synthetic_dataset(num_train=3, num_val=1, num_test=1, size=IMAGE_SIZE, seed=5)


class LabelServer:
    """A ``monailabel start_server`` child process on 127.0.0.1 (its own process group), its URL and log.

    Args:
        app: the MONAI Label app folder.
        studies: the studies folder.
        conf: the ``--conf`` settings (``{"models": "x", "skip_trainers": "true"}``).
        work: where the server runs and writes ``server.log``.
        start_timeout: seconds :meth:`wait_until_up` waits for ``/info/``.
    """

    def __init__(self, app: Path, studies: Path, conf: Mapping[str, str], work: Path, start_timeout: float) -> None:
        self.app = app
        self.start_timeout = start_timeout
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = work / "server.log"
        script = Path(sys.executable).parent / "monailabel"
        launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "monailabel.main"]
        options = [arg for key, value in conf.items() for arg in ("--conf", key, value)]
        cmd = [
            *launcher, "start_server", "--app", str(app), "--studies", str(studies),
            "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1], *options,
        ]  # fmt: skip
        env = {
            **os.environ,
            "MONAILABEL_PYEXE": sys.executable,
            "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
            "OMP_NUM_THREADS": "2",
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_until_up(self) -> None:
        """Return once ``/info/`` answers 200; fail with the log's tail if the server exits or times out."""
        import requests

        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError(f"the server did not answer within {self.start_timeout} s:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self) -> None:
        """Stop the server and its children (training processes): SIGTERM to the group, SIGKILL after 20 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=20)


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
