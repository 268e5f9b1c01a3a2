"""MONAI Label training task: the bundle's own training (cached embeddings + head) on the datastore's labels.

Why not MONAI Label's ``BundleTrainTask``: it hands the bundle its datalist through ``train#dataset#data`` and
``validate#dataset#data``, i.e. it expects a dataset over image files. Ours trains on cached encoder embeddings
(``train#records`` -> ``train#dataset``, computed by ``precompute_embeddings`` from a datalist *file*), on 2D
slices, and keeps only the head's weights. So this task:

1. takes the image/label pairs with a final label from the datastore, checks them (:mod:`.uploads`) and turns
   3D stacks into their annotated 2D slices (TIFF files in the run folder; 2D images are used in place);
2. writes a MONAI datalist (``training`` / ``validation``) and a JSON overlay with the run's folders and options;
3. runs ``python -m monai.bundle run training`` on ``train.yaml`` + the app's overlays + that overlay (the
   embedding cache is kept between runs, so unchanged images are not encoded again);
4. copies the best head (``model.pt``, best validation Dice) over the app's model atomically; the inference task
   reloads it at its next request.

By default training starts from the current head (fine-tuning, as MONAI Label's active-learning loop expects);
``{"pretrained": false}`` starts from scratch.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from ..data.readers import open_volume
from .bundle import BundleSettings, run_bundle, write_overrides
from .uploads import UploadRejected, check_image, check_label

__all__ = ["ScSAMTrainTask", "training_slices", "split_datalist"]

logger = logging.getLogger(__name__)


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


class ScSAMTrainTask(TrainTask):
    """Train the ScSAM head on the datastore's labelled images with the bundle's training workflow.

    Args:
        settings: the bundle and its overrides.
        model_path: the head weights the inference task uses; replaced by the best head of every run.
        work_dir: runs (``run_<time>/``) and the shared embedding cache (``embedding_cache/``) go here.
        max_epochs: default number of epochs (request ``max_epochs``).
        val_split: default fraction of slices kept for validation (request ``val_split``).
        description: shown by MONAI Label clients.
    """

    def __init__(
        self,
        settings: BundleSettings,
        model_path: str | Path,
        work_dir: str | Path,
        *,
        max_epochs: int = 20,
        val_split: float = 0.2,
        description: str = "Train the ScSAM head (frozen SAM + MAE encoders) on the labelled images",
    ) -> None:
        super().__init__(description)
        self.settings = settings
        self.model_path = Path(model_path)
        self.work_dir = Path(work_dir)
        self.max_epochs = max_epochs
        self.val_split = val_split
        self.num_classes = len(settings.class_names()) - 1

    def config(self) -> dict[str, Any]:
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

    def _overrides(self, request: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.settings.overrides)
        values.update(
            {
                "bundle_root": str(self.settings.bundle_dir),
                "dataset_dir": str(run_dir),
                "datalist": str(run_dir / "datalist.json"),
                "cache_dir": str(self.work_dir / "embedding_cache"),
                "output_dir": str(run_dir),
                "ckpt_dir": str(run_dir / "models"),
                "resume": False,
                "train#trainer#max_epochs": int(request.get("max_epochs", self.max_epochs)),
            }
        )
        if self.settings.device:
            values["device"] = f"$torch.device('{self.settings.device}')"
        for key, target, kind in (
            ("train_batch_size", "train#batch_size", int),
            ("views_per_image", "views_per_image", int),
            ("learning_rate", "learning_rate", float),
            ("num_workers", "num_workers", int),
        ):
            if request.get(key) is not None:
                values[target] = kind(request[key])
        pretrained = str(request.get("pretrained", True)).lower() not in ("false", "0", "no")
        if pretrained and self.model_path.is_file():
            start = f"$scsam_monai.label.bundle.warm_start(@network_def, {str(self.model_path)!r}).to(@device)"
            values["network"] = start
            values["+imports"] = ["$import scsam_monai.label.bundle"]
        return values

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        pairs = datastore.datalist()
        if not pairs:
            raise ValueError("No image has a final label in the datastore yet: label (and submit) some images first.")
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
        run_dir = self.work_dir / f"run_{stamp}"
        run_dir.mkdir(parents=True)
        records = training_slices(pairs, run_dir / "slices", self.num_classes)
        if not records:
            raise ValueError(f"None of the {len(pairs)} labelled images can be used (see the warnings above).")
        datalist = split_datalist(records, float(request.get("val_split", self.val_split)))
        (run_dir / "datalist.json").write_text(json.dumps(datalist, indent=2))
        overrides = write_overrides(run_dir / "label_overrides.json", self._overrides(request, run_dir))
        logger.info(
            f"Training on {len(datalist['training'])} slices, validating on {len(datalist['validation'])} "
            f"({len(pairs)} labelled images); run folder {run_dir}"
        )
        run_bundle(self.settings, "training", overrides, cwd=run_dir, log=logger.info)
        best = run_dir / "models" / "model.pt"
        if not best.is_file():
            raise RuntimeError(f"Training finished without writing {best}.")
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.model_path.with_name(f".{self.model_path.name}.{stamp}.tmp")
        shutil.copyfile(best, staging)
        os.replace(staging, self.model_path)
        curve_file = run_dir / "learning_curve.json"
        curve = json.loads(curve_file.read_text()) if curve_file.is_file() else {}
        metrics = curve.get("val_metric") or []
        stats = {
            "run_dir": str(run_dir),
            "model": str(self.model_path),
            "labelled_images": len(pairs),
            "train_slices": len(datalist["training"]),
            "val_slices": len(datalist["validation"]),
            "epochs": int(request.get("max_epochs", self.max_epochs)),
            "best_val_mean_dice": max(metrics) if metrics else None,
            "untrained_val_mean_dice": metrics[0] if metrics else None,
        }
        (self.work_dir / "last_run.json").write_text(json.dumps(stats, indent=2))
        logger.info(f"Training done: {stats}")
        return stats
