"""MONAI Label training task: MONAI Label's ``BundleTrainTask`` on the bundle, trained on the datastore's labels.

:class:`ScSAMTrainTask` is a ``BundleTrainTask`` (``monailabel.tasks.train.bundle``), as the stock ``monaibundle``
and ``vista2d`` sample apps train their bundles: it fetches the datastore's labelled images, splits them, hands
them to ``train.yaml`` as ``train#dataset#data`` / ``validate#dataset#data`` with ``max_epochs``, ``device`` and
``bundle_root``, adds a ``CheckpointLoader`` for a warm start and runs the bundle's training workflow with
``monai.bundle.run`` (in MONAI Label's training process, a child of the server). What ScSAM needs on top of that:

- the labelled images are checked (:mod:`.uploads`, unusable pairs are skipped with a warning), 2D images are
  used in place and 3D stacks give their annotated slices (TIFF files in the run folder): ``train.yaml`` trains
  on 2D slices;
- the split keeps at least one validation slice (the best head is chosen on validation Dice), a single slice
  validates on itself;
- the run gets its own folder (``<work_dir>/run_<time>/``: datalist, overrides, learning curve, checkpoints,
  TensorBoard logs), the encoders' embedding cache is shared between runs (``<work_dir>/embedding_cache``), the
  app's overlays and overrides apply, and ``device`` becomes a ``torch.device`` (``train.yaml`` computes with
  ``@device.type``; ``BundleTrainTask`` passes a name);
- the warm start loads the app's served head (``<model_dir>/model.pt``), not the bundle's ``models/model.pt``,
  and only when it was trained with the configured ``image_normalization`` (otherwise training starts from
  scratch, with a warning); ``{"pretrained": false}`` always starts from scratch;
- when the run ends, its best head (highest validation Dice) replaces the served one atomically; the inference
  task reloads it at its next request. ``<work_dir>/last_run.json`` summarises the run (``GET /info/``).

Training runs on one device: ``BundleTrainTask``'s multi-GPU path writes the merged config into the bundle's
``configs/`` folder and runs ``torchrun`` without checking its exit status, so it is switched off.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai.bundle
import numpy as np
import tifffile
import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask

from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.io.readers import open_volume
from scsam_monai.label.bundle import BundleSettings, write_overrides
from scsam_monai.label.uploads import UploadRejected, check_image, check_label

__all__ = ["ScSAMTrainConstants", "ScSAMTrainTask", "training_slices", "split_datalist"]

logger = logging.getLogger(__name__)

RUN_ID = "training"
"""The bundle workflow a training request runs (``train.yaml``)."""


def training_slices(pairs: Sequence[dict[str, str]], out_dir: str | Path, num_classes: int) -> list[dict[str, str]]:
    """2D image/label pairs for the bundle's datalist from the datastore's pairs (2D images or 3D stacks).

    A 2D pair is used in place. A 3D stack gives its slices whose label map is not all background, written as
    ``out_dir/<name>_z<index>_{image,label}.tif``. Pairs that cannot be used are skipped with a warning.

    Args:
        pairs: ``{"image": path, "label": path}`` records (absolute paths).
        out_dir: where slices of stacks go.
        num_classes: number of foreground classes (label values above it are refused).
    """
    out_dir = Path(out_dir)
    records: list[dict[str, str]] = []
    for pair in pairs:
        image, label = Path(pair["image"]), Path(pair["label"])
        try:
            shape = check_image(image, name=image.name)
            check_label(label, num_classes=num_classes, image_shape=shape, name=f"label of {image.name}")
        except UploadRejected as err:
            logger.warning(f"Skipping {image.name}: {err.message}")
            continue
        if shape[0] == 1:
            records.append({"image": str(image), "label": str(label)})
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = image.name.split(".")[0]
        with open_volume(image) as img, open_volume(label) as lab:
            for z in range(shape[0]):
                plane = lab.read_slice(z)
                if not plane.any():
                    continue
                image_file = out_dir / f"{stem}_z{z:04d}_image.tif"
                label_file = out_dir / f"{stem}_z{z:04d}_label.tif"
                tifffile.imwrite(image_file, img.read_slice(z))
                tifffile.imwrite(label_file, plane.astype(np.uint8 if num_classes < 256 else np.uint16))
                records.append({"image": str(image_file), "label": str(label_file)})
    return records


def split_datalist(records: Sequence[dict[str, str]], val_split: float, seed: int = 0) -> dict[str, list]:
    """A MONAI datalist with ``training`` and ``validation`` splits (seeded shuffle, at least one of each).

    With a single record it is in both splits: validation then shows only how well the head fits it.
    """
    records = sorted(records, key=lambda r: r["image"])
    if len(records) < 2:
        return {"training": list(records), "validation": list(records)}
    random.Random(seed).shuffle(records)
    n_val = min(len(records) - 1, max(1, round(len(records) * val_split)))
    return {"training": records[n_val:], "validation": records[:n_val]}


class ScSAMTrainConstants(BundleConstants):
    """``BundleTrainTask``'s names in ``train.yaml``, with the handler list a checkpoint loader goes into."""

    def key_train_handlers(self) -> str:
        # train.yaml's train#handlers is a list of two entries, each attaching one list: the handlers every rank
        # attaches, then rank 0's. The stock task puts its warm start first in train#handlers; this app puts it
        # first in the every-rank list itself, where it is attached in the same place, before every handler
        return "train#handlers_every_rank"


@dataclass
class _Run:
    """One training run: its folder, its request and how many labelled images it found."""

    dir: Path
    request: dict[str, Any]
    labelled_images: int = 0


def _truthy(value: Any) -> bool:
    """A request flag from JSON or a client's form: ``False``, ``"false"``, ``"0"``, ``"no"`` are false."""
    return str(value).strip().lower() not in ("false", "0", "no", "none", "")


class ScSAMTrainTask(BundleTrainTask):
    """Train the ScSAM head on the datastore's labelled images (see the module docstring).

    Args:
        settings: the bundle, its overlays and overrides.
        model_path: the served head, warm start of every run and replaced by its best head.
        work_dir: runs (``run_<time>/``), the shared embedding cache and ``last_run.json`` go here.
        conf: the app's ``--conf`` settings.
        max_epochs: default number of epochs (request ``max_epochs``).
        val_split: default fraction of slices kept for validation (request ``val_split``).
        description: shown by MONAI Label clients.
    """

    def __init__(
        self,
        settings: BundleSettings,
        model_path: str | Path,
        work_dir: str | Path,
        conf: dict[str, str] | None = None,
        *,
        max_epochs: int = 20,
        val_split: float = 0.2,
        description: str = "Train the ScSAM head (frozen SAM + MAE encoders) on the labelled images",
    ) -> None:
        # BundleTrainTask's __init__ calls _load_bundle_config (below), which needs the settings
        self.settings = settings
        self.model_path = Path(model_path).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.max_epochs = max_epochs
        self.val_split = val_split
        super().__init__(str(settings.bundle_dir), dict(conf or {}), const=ScSAMTrainConstants(), load_strict=True)
        self.description = description
        self.num_classes = len(settings.class_names()) - 1
        self.preprocessing = ImagePreprocessing.of(self.bundle_config.get_parsed_content("image_normalization"))
        self._run: _Run | None = None

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """``train.yaml`` + the app's overlays and overrides (``BundleTrainTask`` reads ``train.yaml`` alone)."""
        return self.settings.parser("train.yaml")

    def config(self) -> dict[str, Any]:
        """The options clients show (3D Slicer's training panel) and send back with a request."""
        return {
            "max_epochs": self.max_epochs,
            "val_split": self.val_split,
            "train_batch_size": 8,
            "views_per_image": 4,
            "learning_rate": 0.001,
            "pretrained": True,
        }

    def stats(self) -> dict[str, Any]:
        path = self.work_dir / "last_run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Run ``BundleTrainTask``'s training in a new run folder, then serve its best head; the run's summary."""
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
        run_dir = self.work_dir / f"run_{stamp}"
        run_dir.mkdir(parents=True)
        # the client's options over the defaults; fixed whatever a client sends: this bundle's training workflow
        # on one device, no MLflow tracking (not installed with the app)
        fixed = {"run_id": RUN_ID, "multi_gpu": False, "force_multi_gpu": False, "tracking": ""}
        request = {**self.config(), **request, **fixed}
        if self.settings.device:
            request["device"] = self.settings.device
        self._run = _Run(dir=run_dir, request=request)
        try:
            super().__call__(request, datastore)
            return self._serve_best_head(self._run)
        finally:
            self._run = None

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, str]]:
        """The datastore's image/label pairs with a final label, checked, as 2D slices (:func:`training_slices`)."""
        assert self._run is not None
        pairs = datastore.datalist()
        if not pairs:
            raise ValueError("No image has a final label in the datastore yet: label (and submit) some images first.")
        records = training_slices(pairs, self._run.dir / "slices", self.num_classes)
        if not records:
            raise ValueError(f"None of the {len(pairs)} labelled images can be used (see the warnings above).")
        self._run.labelled_images = len(pairs)
        return records

    def _partition_datalist(
        self, datalist: Sequence[dict[str, str]], request: dict[str, Any], shuffle: bool = False
    ) -> tuple[list, list]:
        """Training and validation slices by :func:`split_datalist` (seeded, at least one validation slice)."""
        split = split_datalist(datalist, float(request.get("val_split", self.val_split)))
        return split["training"], split["validation"]

    def _load_checkpoint(self, model_pytorch: str, pretrained: Any, train_handlers: list) -> None:
        """Warm start: a ``CheckpointLoader`` of the served head first in ``train_handlers`` (every rank's list).

        ``BundleTrainTask`` loads ``model_pytorch``, the bundle's ``models/<model_filename>``; the app fine-tunes
        the head it serves. A served head trained with another ``image_normalization`` would refuse to load
        and stop the run: training then starts from scratch, with a warning.
        """
        if not _truthy(pretrained):
            return
        if not self.model_path.is_file():
            logger.info(f"No served head at {self.model_path}: training the head from scratch.")
            return
        try:
            state = torch.load(self.model_path, map_location="cpu", weights_only=True)
            recorded = ImagePreprocessing.recorded(state)
        except Exception as err:  # noqa: BLE001 - any unreadable file: train from scratch, say why
            logger.warning(f"Training the head from scratch: the served head {self.model_path} is unreadable ({err}).")
            return
        if recorded is not None and recorded != self.preprocessing:
            logger.warning(
                f"Training the head from scratch: the served head was trained with image_normalization "
                f"{str(recorded)!r}, this configuration normalises with {str(self.preprocessing)!r}."
            )
            return
        if any(isinstance(h, dict) and h.get("_target_") == "CheckpointLoader" for h in train_handlers):
            return
        # map_location cpu: a head saved on a GPU also loads on a CPU-only server (the weights are copied into
        # the network's parameters wherever they are); strict: every weight of the head or none
        loader = {
            "_target_": "CheckpointLoader",
            "load_path": str(self.model_path),
            "load_dict": {"model": "$@network"},
            "strict": self.load_strict,
            "map_location": "cpu",
        }
        train_handlers.insert(0, loader)
        logger.info(f"Fine-tuning the served head {self.model_path}")

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Add the run's folders, the app's overrides and the request's options to ``BundleTrainTask``'s."""
        assert self._run is not None
        run, request = self._run, self._run.request
        for key, value in self.settings.overrides.items():
            overrides.setdefault(key, value)
        overrides.update(
            {
                "dataset_dir": str(run.dir),
                "datalist": str(run.dir / "datalist.json"),
                "cache_dir": str(self.work_dir / "embedding_cache"),
                "output_dir": str(run.dir),
                "ckpt_dir": str(run.dir / "models"),
                "resume": False,
                self.const.key_train_trainer_max_epochs(): int(overrides[self.const.key_train_trainer_max_epochs()]),
                # BundleTrainTask passes a device name; train.yaml computes with a torch.device (@device.type)
                self.const.key_device(): f"$torch.device({str(overrides[self.const.key_device()])!r})",
            }
        )
        for key, target, kind in (
            ("train_batch_size", "train#batch_size", int),
            ("views_per_image", "views_per_image", int),
            ("learning_rate", "learning_rate", float),
            ("num_workers", "num_workers", int),
        ):
            if request.get(key) is not None:
                overrides[target] = kind(request[key])
        return overrides

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """Run ``train.yaml`` + the app's overlays + the run's overrides (a JSON file in the run folder).

        ``BundleTrainTask`` runs ``train.yaml`` alone with the overrides as arguments; a file keeps the app's
        overlays, keeps ``null`` values (``monai.bundle.run`` drops None arguments) and records the run.
        """
        assert self._run is not None
        run_dir = self._run.dir
        datalist = {
            "training": overrides[self.const.key_train_dataset_data()],
            "validation": overrides.get(self.const.key_validate_dataset_data()) or [],
        }
        (run_dir / "datalist.json").write_text(json.dumps(datalist, indent=2))
        overrides_file = write_overrides(run_dir / "label_overrides.json", overrides)
        logger.info(
            f"Training on {len(datalist['training'])} slices, validating on {len(datalist['validation'])} "
            f"({self._run.labelled_images} labelled images); run folder {run_dir}"
        )
        monai.bundle.run(
            run_id=request.get("run_id", RUN_ID),
            meta_file=self.bundle_metadata_path,
            config_file=[*self.settings.config_files("train.yaml"), str(overrides_file)],
        )

    def _serve_best_head(self, run: _Run) -> dict[str, Any]:
        """Copy the run's best head over the served one (atomically) and write ``last_run.json``."""
        best = run.dir / "models" / "model.pt"
        if not best.is_file():
            raise RuntimeError(f"Training finished without writing {best}.")
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.model_path.with_name(f".{self.model_path.name}.{run.dir.name}.tmp")
        shutil.copyfile(best, staging)
        os.replace(staging, self.model_path)
        datalist = json.loads((run.dir / "datalist.json").read_text())
        curve_file = run.dir / "learning_curve.json"
        curve = json.loads(curve_file.read_text()) if curve_file.is_file() else {}
        metrics = curve.get("val_metric") or []
        stats = {
            "run_dir": str(run.dir),
            "model": str(self.model_path),
            "labelled_images": run.labelled_images,
            "train_slices": len(datalist["training"]),
            "val_slices": len(datalist["validation"]),
            "epochs": int(run.request["max_epochs"]),
            "best_val_mean_dice": max(metrics) if metrics else None,
            # epoch 0: the head the run started from (the served head when warm-started, else untrained)
            "start_val_mean_dice": metrics[0] if metrics else None,
        }
        (self.work_dir / "last_run.json").write_text(json.dumps(stats, indent=2))
        logger.info(f"Training done: {stats}")
        return stats
