"""Helpers shared by the tests: run a command or a bundle as a child process, a free TCP port, train.yaml's
preprocessing, the real EM sample's folder, the tiny random-weight encoders and a stand-in image-to-logits model.

One home for what the end-to-end tests all need, so that a timeout, an environment variable or the way a
failure is reported changes in one place. Import them as ``from tests.helpers import run_bundle``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.transforms import Compose
from torch import nn

from scsam_monai.bundle_command import CONFIGS_DIR, bundle_command
from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder
from scsam_monai.networks.precision import cpu_has_native_bf16
from scsam_monai.networks.scsam import with_background

__all__ = [
    "NATIVE_BF16_ONLY",
    "REAL_EM_SAMPLE",
    "SigkillAfterCheckpoint",
    "StandInModel",
    "free_port",
    "run_bundle",
    "run_command",
    "tiny_encoder",
    "train_preprocessing",
]

REAL_EM_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "drosophila-vnc-sstem"
"""The real EM sample beside the repository (20 Drosophila VNC ssTEM sections); tests skip when it is absent."""

NATIVE_BF16_ONLY = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="needs a CPU with native bf16 (AVX512-BF16 or AMX)"
)
"""Marks a test that runs bf16 on the CPU: a CPU without bf16 instructions emulates them, tens of times slower than
float32 (minutes for a tiny encoder); the "auto" precision never picks bf16 there, nor does the bundle's amp."""

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


def tiny_encoder(kind: str, **options: Any) -> FrozenSamEncoder | FrozenMaeEncoder:
    """A frozen encoder of the test-only ``tiny`` architecture with random weights (no checkpoint to download).

    Args:
        kind: ``"sam"`` (:class:`FrozenSamEncoder`) or ``"mae"`` (:class:`FrozenMaeEncoder`).
        options: other arguments of the encoder (``seed``, ``precision``, ``tile_size``, ...).
    """
    encoders = {"sam": FrozenSamEncoder, "mae": FrozenMaeEncoder}
    if kind not in encoders:
        raise ValueError(f"kind must be one of {sorted(encoders)}, got {kind!r}")
    return encoders[kind](arch="tiny", allow_random_weights=True, **options)


class StandInModel(nn.Module):
    """Stand-in for ScSAM in inference tests: ``(B, 1, H, W)`` images -> ``(B, 1 + C, H, W)`` logits, background
    first, from a rule simple enough for a test to know the label map it must give.

    It counts its calls (``calls``) and the batch sizes it segmented (``batch_sizes``). It has no ``num_classes``
    attribute, so that inference finds C from one call of the model, as it does for a model that is not ScSAM.

    Args:
        rule: how the class logits follow from the images, one of
            ``"index"``: image i of a stream (filled with i / 100) is class (i mod C) + 1 everywhere (logits +-10);
            ``"bands"``: class k where the intensity lies in band k of C + 1 equal bands of [0, 1], background in
            band 0 (logit 20 x (half a band - distance to the band's centre));
            ``"background"``: all logits 0 (background everywhere), no parameters;
            ``"conv"``: a trainable 3x3 (8 channels), ReLU, 1x1 convolution, ``net``, whose output are the C
            per-class mask logits.
        num_classes: C, the number of classes besides the background.
        record: keep a copy of every batch in ``seen``.
        delay: seconds slept per image of a batch (a slow model).
        fail_on_call: raise ``RuntimeError("device lost")`` on this call (1 is the first); None never.
    """

    RULES = ("index", "bands", "background", "conv")

    def __init__(
        self,
        rule: str = "bands",
        *,
        num_classes: int = 3,
        record: bool = False,
        delay: float = 0.0,
        fail_on_call: int | None = None,
    ) -> None:
        super().__init__()
        if rule not in self.RULES:
            raise ValueError(f"rule must be one of {self.RULES}, got {rule!r}")
        self.rule, self.classes = rule, num_classes
        self.record, self.delay, self.fail_on_call = record, delay, fail_on_call
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.seen: list[torch.Tensor] = []
        if rule in ("index", "bands"):
            self.scale = nn.Parameter(torch.tensor(10.0 if rule == "index" else 20.0), requires_grad=False)
        if rule == "conv":
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1 + C, H, W)`` of images ``(B, 1, H, W)``."""
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("device lost")
        if self.delay:
            time.sleep(self.delay * images.shape[0])
        self.batch_sizes.append(images.shape[0])
        if self.record:
            self.seen.append(images.clone())
        if self.rule == "background":
            return torch.zeros(images.shape[0], 1 + self.classes, *images.shape[2:])
        if self.rule == "conv":
            return with_background(self.net(images))
        if self.rule == "index":
            index = torch.round(images.mean(dim=(1, 2, 3)) * 100).long()
            winner = nn.functional.one_hot(index % self.classes, self.classes).float() * 2 - 1  # (B, C)
            return with_background((winner[:, :, None, None] * self.scale).expand(-1, -1, *images.shape[-2:]))
        bands = self.classes + 1
        centres = ((torch.arange(1, bands) + 0.5) / bands).view(1, self.classes, 1, 1)
        return with_background(self.scale * (0.5 / bands - (images - centres).abs()))
