"""Helpers shared by the tests: run a command or a bundle as a child process, a free TCP port, train.yaml's
preprocessing, the real EM sample's folder.

One home for what the end-to-end tests all need, so that a timeout, an environment variable or the way a
failure is reported changes in one place. Import them as ``from tests.helpers import run_bundle``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.transforms import Compose

from scsam_monai.bundle_command import CONFIGS_DIR, bundle_command

__all__ = ["REAL_EM_SAMPLE", "SigkillAfterCheckpoint", "free_port", "run_bundle", "run_command", "train_preprocessing"]

REAL_EM_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "drosophila-vnc-sstem"
"""The real EM sample beside the repository (20 Drosophila VNC ssTEM sections); tests skip when it is absent."""

TAIL = 6000
"""Characters of stdout and of stderr shown when a child process fails."""


def _text(stream: str | bytes | None) -> str:
    if stream is None:
        return ""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream


def run_command(
    cmd: Sequence[str | Path],
    *,
    cwd: str | Path,
    env: Mapping[str, Any] | None = None,
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with its output captured as text; fail the test, with the output's tail, if it fails.

    Args:
        cmd: the command line.
        cwd: the folder it runs in.
        env: variables set on top of this process's environment (values made ``str``).
        timeout: seconds before the child is killed and the test fails.
        check: fail the test on a non-zero exit status (False: return it, for tests of failing runs).

    Returns:
        The ``CompletedProcess``; ``.stdout + .stderr`` is the whole log.
    """
    args = [str(c) for c in cmd]
    environment = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    try:
        result = subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(
            f"{' '.join(args[:6])} ... did not finish within {timeout:.0f} s:\n"
            f"--- stdout ---\n{_text(err.stdout)[-TAIL:]}\n--- stderr ---\n{_text(err.stderr)[-TAIL:]}"
        )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args[:6])} ... exited with {result.returncode}:\n"
            f"--- stdout ---\n{result.stdout[-TAIL:]}\n--- stderr ---\n{result.stderr[-TAIL:]}"
        )
    return result


def run_bundle(
    run_id: str,
    config_files: Sequence[str | Path],
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: str | Path,
    env: Mapping[str, Any] | None = None,
    timeout: float = 900,
    check: bool = True,
    **command: Any,
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run run_id ...`` as a user types it (``bundle_command``), run by ``run_command``.

    Args:
        run_id: the workflow id (``training``, ``evaluating``, ...).
        config_files: config files in order; bare names are taken from ``bundle/configs``.
        overrides: ids and values given as ``--id value``.
        cwd: the folder it runs in.
        env: variables set on top of this process's environment.
        timeout: seconds before the child is killed and the test fails.
        check: fail the test on a non-zero exit status.
        command: other arguments of ``bundle_command`` (``configs_dir``, ``meta_file``, ``logging_file``).
    """
    cmd = bundle_command(run_id, config_files, overrides=overrides, **command)
    return run_command(cmd, cwd=cwd, env=env, timeout=timeout, check=check)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server or a process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_preprocessing(overrides: Mapping[str, Any] | None = None) -> Compose:
    """train.yaml's ``preprocessing`` (reading, channel, dtype, intensity), parsed by MONAI as the bundle parses it.

    Tests use the bundle's own transforms instead of a copy that could drift from it.

    Args:
        overrides: config ids and values set before parsing, as on the command line, e.g.
            ``{"image_normalization": "prepared"}``.
    """
    parser = ConfigParser()
    parser.read_config(CONFIGS_DIR / "train.yaml")
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser.get_parsed_content("preprocessing")


class SigkillAfterCheckpoint:
    """Test-only trainer handler: SIGKILL the run one iteration into epoch ``epoch + 1``, after ``path`` holds epoch
    ``epoch``.

    Interrupts a training at a known point instead of racing the clock: the resumable checkpoint of epoch
    ``epoch`` is on disk and the next epoch has changed the weights and drawn random numbers that were never
    saved. A bundle run gets it from an overlay (``+train#handlers_every_rank: [{_target_: ...}]``) with the
    repository root on ``PYTHONPATH``.

    Args:
        path: the resumable checkpoint (``TrainingCheckpoint``'s ``last.pt``).
        epoch: the last epoch whose checkpoint the run writes.

    Raises:
        RuntimeError: at the kill point ``path`` does not hold epoch ``epoch`` (the test would prove nothing).
    """

    def __init__(self, path: str | Path, epoch: int) -> None:
        self.path = Path(path)
        self.epoch = epoch

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch != self.epoch + 1:
            return
        saved = torch.load(self.path, map_location="cpu", weights_only=True)["trainer"] if self.path.is_file() else None
        if saved is None or saved["epoch"] != self.epoch:
            raise RuntimeError(f"{self.path}: no checkpoint of epoch {self.epoch} to resume from (found {saved})")
        os.kill(os.getpid(), signal.SIGKILL)
