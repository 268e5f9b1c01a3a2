"""The bundle as the MONAI Label app sees it: which configs and which overrides, read from the app's settings.

MONAI Label passes an app its settings as strings (``monailabel start_server --conf KEY VALUE``).
:class:`BundleSettings` reads the ones about the bundle:

- ``bundle``: the bundle folder (default: ``bundle/`` of this repository);
- ``configs``: overlays on ``train.yaml`` (+ ``inference.yaml`` for inference), comma-separated, names in
  ``<bundle>/configs`` or paths; e.g. ``demo.yaml`` for the tiny random-weight CPU profile;
- ``overrides``: a JSON object of bundle ids to values, e.g. ``{"sam_checkpoint": "/models/sam_vit_b.pth"}``;
- ``device``: ``cuda`` / ``cpu`` (default: CUDA when available).

The app's tasks build on MONAI Label's ``BundleInferTask`` / ``BundleTrainTask``, which read a bundle's config
from one file; :meth:`BundleSettings.parser` gives them the bundle's configs with the app's overlays and overrides
instead. Nothing here imports MONAI Label, so it works (and is tested) without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from scsam_monai.bundle_command import BUNDLE_DIR

__all__ = ["BundleSettings", "default_bundle_dir", "write_overrides"]

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

    def metadata(self) -> dict[str, Any]:
        """The bundle's ``metadata.json``."""
        return json.loads((self.configs_dir / "metadata.json").read_text(encoding="utf-8"))

    def class_names(self) -> list[str]:
        """The bundle's class names, background first."""
        return list(self.parser("train.yaml").get_parsed_content("class_names"))


def write_overrides(path: str | Path, values: Mapping[str, Any]) -> Path:
    """Write bundle overrides as a JSON config file (ids with ``#`` set nested entries) and return its path."""
    path = Path(path)
    path.write_text(json.dumps(dict(values), indent=2, default=str))
    return path
