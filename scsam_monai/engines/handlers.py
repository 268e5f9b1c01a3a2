"""Ignite handlers of scsam-monai: parameter count, learning curve, metrics report, overlays.

MONAI's handlers cover statistics, TensorBoard, validation, checkpoints and LR schedules; these add what
users of this bundle want to look at afterwards, written atomically. The learning curve is an
:class:`~scsam_monai.engines.curves.EpochHistory`, as the MAE pre-training's loss history is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from scsam_monai.atomic import atomic_save_figure, atomic_write_json, atomic_write_text
from scsam_monai.engines.curves import EpochHistory, headless_pyplot, plot_series
from scsam_monai.networks.scsam import count_trainable_parameters
from scsam_monai.palette import class_colour, colourise, display_image

__all__ = [
    "PAPER_TRAINABLE_PARAMETERS",
    "AtomicCheckpointSaver",
    "CpuTensorsSaving",
    "TrainableParameterLogger",
    "LearningCurve",
    "MetricsReport",
    "OverlayWriter",
    "format_metrics_markdown",
]

logger = logging.getLogger(__name__)

PAPER_TRAINABLE_PARAMETERS = 27.6e6


class CpuTensorsSaving:
    """Mixin of a checkpoint save handler: every tensor is written as a CPU tensor.

    A ``model.pt`` saved from a GPU would otherwise hold CUDA tensors, which ``torch.load`` without
    ``map_location`` (as MONAI Label's warm start loads it) cannot read on a CPU-only machine.
    """

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(_on_cpu(checkpoint), filename, metadata)  # type: ignore[misc]


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor inside dicts, lists and tuples moved to the CPU; other leaves as they are.

    (Ignite's ``apply_to_tensor`` refuses the ints, floats and None an optimizer's state dict holds.)
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return type(value)({key: _on_cpu(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_on_cpu(item) for item in value)
    return value


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes (temporary file, then rename) of CPU tensors.

    MONAI creates Ignite's ``DiskSaver`` with ``atomic=False``, so a run killed during a save could leave a
    truncated ``model.pt``; this switches every saver it made to Ignite's atomic mode and makes it write CPU
    tensors (:class:`CpuTensorsSaving` mixed into the saver's own class, which keeps MONAI's file names), so that
    the weights load on any device. Same arguments.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                saver = checkpoint.save_handler
                saver.__class__ = type(f"Cpu{type(saver).__name__}", (CpuTensorsSaving, type(saver)), {})
                saver._atomic = True


class TrainableParameterLogger:
    """Log the trainable and frozen parameter counts of the trained network when training starts.

    Args:
        frozen_modules: modules that run frozen beside it (the encoders), counted as frozen.
        paper_parameters: the trainable parameters a paper reports for this very model, logged beside ours
            (``PAPER_TRAINABLE_PARAMETERS`` for ScSAM); None for any other network (baselines, variants).
    """

    def __init__(
        self, frozen_modules: Sequence[torch.nn.Module | None] = (), paper_parameters: float | None = None
    ) -> None:
        self.frozen_modules = [m for m in frozen_modules if m is not None]
        self.paper_parameters = paper_parameters

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        network = engine.network
        trainable = count_trainable_parameters(network)
        frozen = sum(p.numel() for p in network.parameters() if not p.requires_grad)
        frozen += sum(p.numel() for m in self.frozen_modules for p in m.parameters())
        engine.state.trainable_parameters = trainable
        paper = f" (paper: {self.paper_parameters / 1e6:.1f}M)" if self.paper_parameters is not None else ""
        logger.info("Trainable parameters: %.2fM%s; frozen parameters: %.2fM.", trainable / 1e6, paper, frozen / 1e6)


class LearningCurve(EpochHistory):
    """Record the mean training loss per epoch and the validation key metric, and plot both.

    Attached to the trainer; it also listens to the ``validator`` so that a validation run before training
    (``ValidationHandler(exec_at_start=True)``) is recorded as epoch 0, the untrained value. Writes
    ``learning_curve.json`` and ``learning_curve.png`` (:class:`~scsam_monai.engines.curves.EpochHistory`).

    Args:
        output_dir: folder of ``learning_curve.json`` and ``learning_curve.png``.
        validator: the evaluator whose key metric is recorded.
        metric_name: the metric to record (the evaluator's key metric name).
    """

    fields = ("epoch", "train_loss", "val_epoch", "val_metric")

    def __init__(self, output_dir: str | Path, validator: Engine | None = None, metric_name: str = "val_mean_dice"):
        super().__init__(output_dir, stem="learning_curve")
        self.validator = validator
        self.metric_name = metric_name
        self._trainer: Engine | None = None

    def attach(self, trainer: Engine) -> None:
        self._trainer = trainer
        super().attach(trainer)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._record_validation)

    def epoch_values(self, engine: Engine) -> dict[str, float]:
        return {"epoch": engine.state.epoch, "train_loss": self.epoch_mean("loss")}

    def _record_validation(self, validator: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else 0
        value = validator.state.metrics.get(self.metric_name)
        if value is None:
            return
        if self.history["val_epoch"] and self.history["val_epoch"][-1] == epoch:
            self.history["val_metric"][-1] = float(value)
        else:
            self.history["val_epoch"].append(epoch)
            self.history["val_metric"].append(float(value))
        self.write()

    def json_record(self) -> dict:
        return {"metric_name": self.metric_name, **self.state_dict()}

    def draw(self, plt):
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4))
        history = self.history
        plot_series(
            ax_loss,
            "Training loss (mean per epoch)",
            {"train_loss": (history["epoch"], history["train_loss"])},
            xlabel="epoch",
            ylabel="training loss",
            styles={"train_loss": {"color": "tab:blue"}},
        )
        plot_series(
            ax_val,
            "Validation",
            {self.metric_name: (history["val_epoch"], history["val_metric"])},
            xlabel="epoch (0 = untrained)",
            ylabel=self.metric_name,
            styles={self.metric_name: {"color": "tab:green"}},
        )
        ax_val.set_ylim(0, 1)
        fig.tight_layout()
        return fig


def format_metrics_markdown(scores: Mapping, class_names: Sequence[str], title: str = "Segmentation metrics") -> str:
    """A Markdown table of ``segmentation_scores`` output: the aggregate scores, then Dice per class."""

    def fmt(value: object) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"

    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    for key in ("challenge_iou", "iou", "mc_iou", "miou", "aji", "dice_mean"):
        if key in scores:
            lines.append(f"| {key} | {fmt(scores[key])} |")
    dice = scores.get("dice", {})
    if dice:
        lines += ["", "| class | Dice |", "|---|---|"]
        for index, value in sorted(dice.items(), key=lambda kv: int(kv[0])):
            name = class_names[int(index)] if int(index) < len(class_names) else str(index)
            lines.append(f"| {name} | {fmt(value)} |")
    return "\n".join(lines) + "\n"


class MetricsReport:
    """Write ``metrics.json`` and ``metrics.md`` with every score when the evaluator completes.

    MONAI's ``MetricsSaver`` cannot write these files: it writes only CSV (``output_type`` "csv": ``metrics.csv``
    of the scalar ``engine.state.metrics``, ``<name>_raw.csv`` of ``metric_details``), not in place atomically,
    while the report here is the full score dict of the metric handler (Dice per class by class name, the AJI,
    the challenge IoU beside the mIoU, the number of images and the run's facts in ``extra``) as one JSON file and
    a Markdown table.

    Args:
        output_dir: destination folder.
        metric_handler: the evaluator's segmentation-scores handler, whose full score dict is reported.
        class_names: names of label values 0..C (0 = background).
        extra: additional facts to put in the JSON (data set, checkpoint, whether weights are pretrained).
    """

    def __init__(
        self,
        output_dir: str | Path,
        metric_handler: object,
        class_names: Sequence[str] = ("background", "nucleus", "mitochondria", "granules"),
        extra: Mapping | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric_handler = metric_handler
        self.class_names = list(class_names)
        self.extra = dict(extra or {})
        self.scores: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scores = getattr(self.metric_handler, "last_scores", None)
        if scores is None:
            raise RuntimeError("MetricsReport: the metric handler has no scores; is it attached to this evaluator?")
        dice = {
            self.class_names[int(k)] if int(k) < len(self.class_names) else str(k): v for k, v in scores["dice"].items()
        }
        report = {k: v for k, v in scores.items() if k != "dice"}
        report["dice_per_class"] = dice
        per_image = getattr(getattr(self.metric_handler, "metric_fn", None), "per_image_iou", None)
        report["num_images"] = int(per_image().shape[0]) if callable(per_image) else None
        report.update(self.extra)
        self.scores = report
        atomic_write_json(self.output_dir / "metrics.json", report)
        atomic_write_text(self.output_dir / "metrics.md", format_metrics_markdown(scores, self.class_names))
        logger.info("Metrics written to %s", self.output_dir / "metrics.json")


def _batch_paths(engine: Engine, key: str = "image_path") -> list[str]:
    """Image paths of the current batch, whether MONAI decollated it (list of dicts) or not (dict of lists)."""
    batch = engine.state.batch
    if isinstance(batch, list):
        return [str(item.get(key, "")) for item in batch]
    paths = batch.get(key, [])
    return [str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]


def _squeeze_map(x: object) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return array.reshape(array.shape[-2:])


class OverlayWriter:
    """Write a PNG grid: image | ground truth | prediction (the ground-truth column when labels exist).

    Args:
        output_dir: destination folder.
        filename: PNG file name.
        max_images: rows of the grid (the first images of the run).
        class_names: names of label values 0..C, for the legend.
    """

    def __init__(
        self,
        output_dir: str | Path,
        filename: str = "overlay.png",
        max_images: int = 4,
        class_names: Sequence[str] = ("background", "nucleus", "mitochondria", "granules"),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.max_images = max_images
        self.class_names = list(class_names)
        self.rows: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        from scsam_monai.io.readers import read_image_2d

        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        paths = _batch_paths(engine)
        for i, output in enumerate(outputs):
            if len(self.rows) >= self.max_images or i >= len(paths):
                return
            pred = _squeeze_map(output["pred"]).astype(np.int64)
            label = output.get("label")
            label = _squeeze_map(label).astype(np.int64) if label is not None else None
            image = read_image_2d(paths[i])
            if image.shape != pred.shape:
                raise ValueError(f"{paths[i]}: image {image.shape} and prediction {pred.shape} differ in size.")
            self.rows.append((Path(paths[i]).name, image, label, pred))

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            return
        plt = headless_pyplot()
        has_label = any(r[2] is not None for r in self.rows)
        cols = 3 if has_label else 2
        fig, axes = plt.subplots(len(self.rows), cols, figsize=(3.2 * cols, 3.2 * len(self.rows)), squeeze=False)
        titles = ["image", "ground truth", "prediction"] if has_label else ["image", "prediction"]
        for r, (name, image, label, pred) in enumerate(self.rows):
            panels = [np.repeat(display_image(image)[..., None], 3, axis=-1)]
            if has_label:
                panels.append(colourise(image, label if label is not None else np.zeros_like(pred)))
            panels.append(colourise(image, pred))
            for c, panel in enumerate(panels):
                axes[r, c].imshow(panel)
                axes[r, c].set_axis_off()
                axes[r, c].set_title(f"{titles[c]}" + (f"\n{name}" if c == 0 else ""), fontsize=8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=class_colour(i)) for i in range(1, len(self.class_names))]
        fig.legend(handles, self.class_names[1:], loc="lower center", ncol=len(handles), fontsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        atomic_save_figure(self.output_dir / self.filename, fig)
        plt.close(fig)
        logger.info("Overlay written to %s", self.output_dir / self.filename)
