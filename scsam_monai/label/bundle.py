"""The bundle as the MONAI Label app sees it: which configs, which overrides, the image-in network, training runs.

MONAI Label passes an app its settings as strings (``monailabel start_server --conf KEY VALUE``).
:class:`BundleSettings` reads the ones about the bundle:

- ``bundle``: the bundle folder (default: ``bundle/`` of this repository);
- ``configs``: overlays on ``train.yaml`` (+ ``inference.yaml`` for inference), comma-separated, names in
  ``<bundle>/configs`` or paths; e.g. ``demo.yaml`` for the tiny random-weight CPU profile;
- ``overrides``: a JSON object of bundle ids to values, e.g. ``{"sam_checkpoint": "/models/sam_vit_b.pth"}``;
- ``device``: ``cuda`` / ``cpu`` (default: CUDA when available).

Nothing here imports MONAI Label, so the functions work (and are tested) without it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from ..bundle_cli import BUNDLE_DIR, bundle_command
from ..networks.checkpoints import load_head_weights

__all__ = ["BundleSettings", "default_bundle_dir", "build_network", "run_bundle", "warm_start", "write_overrides"]

logger = logging.getLogger(__name__)


def default_bundle_dir() -> Path:
    """``bundle/`` next to the installed package (an editable install of this repository)."""
    return BUNDLE_DIR


@dataclass
class BundleSettings:
    """Where the bundle is and how to run it.

    Args:
        bundle_dir: the bundle folder (holding ``configs/``).
        overlays: config files laid over ``train.yaml`` (and ``inference.yaml`` for inference), in order.
        overrides: bundle ids and values set last.
        device: torch device name; None for CUDA when available, else CPU.
    """

    bundle_dir: Path
    overlays: list[Path] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> BundleSettings:
        """Read ``bundle``, ``configs``, ``overrides`` and ``device`` from a MONAI Label app conf (all strings).

        Raises:
            ValueError: the bundle folder or an overlay does not exist, or ``overrides`` is not a JSON object.
        """
        bundle_dir = Path(conf.get("bundle") or default_bundle_dir()).expanduser().resolve()
        if not (bundle_dir / "configs" / "train.yaml").is_file():
            raise ValueError(f"{bundle_dir}: not the ScSAM bundle (configs/train.yaml is missing); set --conf bundle.")
        overlays = []
        for name in (conf.get("configs") or "").split(","):
            name = name.strip()
            if not name:
                continue
            path = Path(name).expanduser()
            path = path if path.is_absolute() or path.is_file() else bundle_dir / "configs" / name
            if not path.is_file():
                raise ValueError(f"{name}: config overlay not found (looked in {bundle_dir / 'configs'}).")
            overlays.append(path.resolve())
        try:
            overrides = json.loads(conf.get("overrides") or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"--conf overrides must be a JSON object of bundle ids to values: {err}") from err
        if not isinstance(overrides, dict):
            raise ValueError("--conf overrides must be a JSON object of bundle ids to values.")
        return cls(bundle_dir=bundle_dir, overlays=overlays, overrides=overrides, device=conf.get("device") or None)

    @property
    def configs_dir(self) -> Path:
        return self.bundle_dir / "configs"

    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def config_files(self, *base: str) -> list[str]:
        """``base`` configs of the bundle (``train.yaml``, ...) followed by the overlays, as strings."""
        return [str(self.configs_dir / b) for b in base] + [str(p) for p in self.overlays]

    def parser(self, *base: str, **extra: Any) -> ConfigParser:
        """A parsed-on-demand config: ``base`` + overlays, with ``bundle_root``, ``device``, overrides, ``extra``."""
        parser = ConfigParser()
        parser.read_meta(str(self.configs_dir / "metadata.json"))
        parser.read_config(self.config_files(*base))
        parser["bundle_root"] = str(self.bundle_dir)
        parser["device"] = f"$torch.device('{self.torch_device()}')"
        for key, value in {**self.overrides, **extra}.items():
            parser[key] = value
        return parser

    def class_names(self) -> list[str]:
        """The bundle's class names, background first."""
        return list(self.parser("train.yaml").get_parsed_content("class_names"))


def build_network(settings: BundleSettings) -> nn.Module:
    """The image-in ``ScSAM`` of ``inference.yaml`` (frozen encoders + head, head weights NOT loaded), on device."""
    parser = settings.parser("train.yaml", "inference.yaml")
    network = parser.get_parsed_content("network_def")
    return network.to(settings.torch_device()).eval()


def run_bundle(
    settings: BundleSettings,
    run_id: str,
    overrides_file: str | Path,
    *,
    cwd: str | Path,
    log: Callable[[str], Any] | None = None,
    timeout: float | None = None,
) -> None:
    """Run ``python -m monai.bundle run <run_id>`` on ``train.yaml`` + overlays + ``overrides_file``.

    The run is a child process (as on the command line), so the MONAI Label server keeps none of its state and
    memory; its output goes to ``log`` line by line (default: this module's logger).

    Args:
        settings: the bundle.
        run_id: the bundle's workflow id (``training``, ``precompute``).
        overrides_file: a JSON/YAML file laid over everything else (datalist, folders, epochs ...).
        cwd: working folder of the run.
        log: called with every output line.
        timeout: seconds before the run is stopped (None: no limit).

    Raises:
        RuntimeError: the run failed; the message ends with its last output lines.
    """
    configs = [*settings.config_files("train.yaml"), str(overrides_file)]
    cmd = bundle_command(run_id, configs, configs_dir=settings.configs_dir)
    log = log or logger.info
    log(f"Running: {' '.join(cmd)}")
    tail: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                line = line.rstrip()
                log(line)
                tail = [*tail[-29:], line]
            process.wait(timeout=timeout)
        except BaseException:
            process.kill()
            raise
    if process.returncode != 0:
        raise RuntimeError(f"bundle run {run_id} failed (exit code {process.returncode}):\n" + "\n".join(tail))


def write_overrides(path: str | Path, values: Mapping[str, Any]) -> Path:
    """Write bundle overrides as a JSON config file (ids with ``#`` set nested entries) and return its path."""
    path = Path(path)
    path.write_text(json.dumps(dict(values), indent=2, default=str))
    return path


def warm_start(head: nn.Module, path: str | Path) -> nn.Module:
    """Load the current head weights from ``path`` into ``head`` to fine-tune it; start fresh if they do not fit.

    Called from the train task's bundle overlay (``network: $scsam_monai.label.bundle.warm_start(...)``).
    """
    try:
        load_head_weights(head, path)
        logger.info(f"Fine-tuning the head from {path}")
    except (FileNotFoundError, ValueError) as err:
        logger.warning(f"Training the head from scratch: {err}")
    return head
