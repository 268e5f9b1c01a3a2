"""Ignite handlers of the MAE pre-training: epoch seeding, loss history, reconstruction figure, encoder export.

MONAI's handlers do statistics, TensorBoard and the learning-rate schedule; checkpoints and resuming are the head
training's :class:`~scsam_monai.engines.resume.TrainingCheckpoint`, and the loss history is an
:class:`~scsam_monai.engines.curves.EpochHistory` as the head training's learning curve is. Files are written
atomically.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from scsam_monai.atomic import atomic_save_figure
from scsam_monai.engines.curves import EpochHistory, headless_pyplot, plot_series
from scsam_monai.mae.engine import PREDICT_NOTHING_KEY

__all__ = ["EpochSeed", "LossHistory", "ReconstructionWriter", "EncoderExporter"]

logger = logging.getLogger(__name__)

_MASK_COLOUR = (0.35, 0.55, 0.85)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return getattr(network, "module", network)  # DistributedDataParallel / DataParallel


class EpochSeed:
    """Seed every epoch from ``(seed, epoch)``: the random crops, flips, shuffling and masks of an epoch depend on
    nothing else, so a run resumed from a checkpoint repeats the epochs of an uninterrupted run.

    At each ``EPOCH_STARTED`` it seeds Python's, NumPy's and torch's RNGs (all devices) and the random transforms of
    ``dataset`` (MONAI's ``set_rnd``); data-loader workers are seeded from torch's RNG when the epoch's iterator
    starts.

    Args:
        seed: the run's seed.
        dataset: the training dataset whose random transforms are reseeded (None to skip).
    """

    def __init__(self, seed: int = 0, dataset: object | None = None) -> None:
        self.seed = int(seed)
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def epoch_seed(self, epoch: int) -> int:
        """The seed of ``epoch`` (below 2**32)."""
        return (self.seed * 1_000_003 + int(epoch)) % (2**32)

    def __call__(self, engine: Engine) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.dataset is not None:
            from monai.data.utils import set_rnd

            set_rnd(self.dataset, seed)


class LossHistory(EpochHistory):
    """Mean training loss per epoch: ``engine.state.metrics[metric_name]``, ``<prefix>.json`` and ``<prefix>.png``.

    Per epoch it records the optimizer steps done so far, the mean loss, the mean loss that predicting nothing
    would have given on the same batches (``predict_nothing`` of :class:`~scsam_monai.mae.engine.MaeTrainStep`; the
    level of a network that learned nothing, about 1.0 with per-patch normalised targets) and the learning rate
    at the epoch's end. The plot shows loss and predict-nothing level against optimizer steps.

    Attach it before the statistics/TensorBoard handlers so that their epoch logs include the mean. It has
    ``state_dict``/``load_state_dict``: put it in the checkpoint so that a resumed run continues the history.

    Args:
        output_dir: folder of the JSON and PNG files.
        prefix: file name stem.
        metric_name: name of the epoch mean in ``engine.state.metrics``.
    """

    fields = ("epochs", "steps", "losses", "predict_nothing", "learning_rates")
    output_keys = ("loss", PREDICT_NOTHING_KEY)

    def __init__(self, output_dir: str | Path, prefix: str = "mae_loss", metric_name: str = "mae_epoch_loss") -> None:
        super().__init__(output_dir, stem=prefix)
        self.metric_name = metric_name

    def epoch_values(self, engine: Engine) -> dict[str, float]:
        mean = self.epoch_mean("loss")
        engine.state.metrics[self.metric_name] = mean
        optimizer = getattr(engine, "optimizer", None)
        return {
            "epochs": int(engine.state.epoch),
            "steps": int(engine.state.iteration),
            "losses": mean,
            "predict_nothing": self.epoch_mean(PREDICT_NOTHING_KEY),
            "learning_rates": float(optimizer.param_groups[0]["lr"]) if optimizer is not None else math.nan,
        }

    def json_record(self) -> dict[str, list]:
        history = self.history
        return {
            "epoch": history["epochs"],
            "step": history["steps"],
            "loss": history["losses"],
            "predict_nothing": history["predict_nothing"],
            "lr": history["learning_rates"],
        }

    def draw(self, plt):
        history = self.history
        by_step = len(history["steps"]) == len(history["losses"])
        x = history["steps"] if by_step else history["epochs"]
        series = {"masked-patch loss": (x, history["losses"])}
        if len(history["predict_nothing"]) == len(x) and not all(math.isnan(v) for v in history["predict_nothing"]):
            series["predicting nothing"] = (x, history["predict_nothing"])
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        plot_series(
            ax,
            "MAE pre-training loss (mean per epoch)",
            series,
            xlabel="optimizer step" if by_step else "epoch",
            ylabel="masked-patch MSE",
            styles={
                "masked-patch loss": {"color": "tab:blue"},
                "predicting nothing": {"color": "tab:gray", "linestyle": "--", "marker": ""},
            },
        )
        fig.tight_layout()
        return fig


class ReconstructionWriter:
    """Every ``interval`` epochs and at the end: a PNG of masked input | reconstruction | original.

    The images are the first ``num_images`` crops of the first batch the run sees, masked with a fixed seed, so
    successive figures show the same crops and masks.

    Args:
        output_dir: destination folder.
        interval: epochs between figures (0: only at the end).
        num_images: rows of the figure.
        filename: PNG name.
        seed: seed of the masks.
    """

    def __init__(
        self,
        output_dir: str | Path,
        interval: int = 50,
        num_images: int = 4,
        filename: str = "mae_reconstruction.png",
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.interval = int(interval)
        self.num_images = int(num_images)
        self.filename = filename
        self.seed = int(seed)
        self.images: torch.Tensor | None = None
        self.written_epochs: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._capture)
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _capture(self, engine: Engine) -> None:
        if self.images is None and isinstance(engine.state.output, dict) and "image" in engine.state.output:
            self.images = engine.state.output["image"][: self.num_images].detach().to("cpu", copy=True)

    def __call__(self, engine: Engine) -> None:
        if self.images is None or (self.written_epochs and self.written_epochs[-1] == engine.state.epoch):
            return
        network = _unwrap(engine.network)
        device = next(network.parameters()).device
        was_training = network.training
        network.eval()
        try:
            generator = torch.Generator().manual_seed(self.seed)
            out = network.reconstruct(self.images.to(device), generator=generator)
        finally:
            network.train(was_training)
        self._plot(out, engine.state.epoch, getattr(network, "norm_pix_loss", False))
        self.written_epochs.append(int(engine.state.epoch))

    def _plot(self, out: dict[str, torch.Tensor], epoch: int, norm_pix: bool | str) -> None:
        plt = headless_pyplot()
        columns = [("masked", "masked input"), ("reconstruction", "reconstruction"), ("original", "original")]
        rows = out["original"].shape[0]
        fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows + 0.4), squeeze=False)
        for r in range(rows):
            masked = out["mask"][r, 0].cpu().numpy() > 0.5
            for c, (key, title) in enumerate(columns):
                gray = out[key][r, 0].float().clamp(0, 1).cpu().numpy()
                image = np.repeat(gray[..., None], 3, axis=-1)
                if key == "masked":
                    image[masked] = _MASK_COLOUR  # masked patches in colour, not confusable with dark EM
                axes[r, c].imshow(image, interpolation="nearest")
                axes[r, c].set_axis_off()
                if r == 0:
                    axes[r, c].set_title(title, fontsize=9)
        fig.suptitle(f"MAE pre-training, epoch {epoch}", fontsize=10)
        if norm_pix:
            caption = "the original patch's mean" + ("" if norm_pix == "mean" else " and spread")
            fig.text(
                0.5,
                0.005,
                f"norm_pix_loss {norm_pix}: each predicted patch is shown with {caption}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        fig.tight_layout(rect=(0, 0.02, 1, 1))
        atomic_save_figure(self.output_dir / self.filename, fig)
        plt.close(fig)
        logger.info("MAE reconstruction (epoch %d) written to %s", epoch, self.output_dir / self.filename)


class EncoderExporter:
    """Write the MAE's encoder alone (``MaskedAutoencoder.save_encoder``) for ``FrozenMaeEncoder``.

    Written every ``interval`` epochs and when training completes, atomically; the file records the architecture
    and the epoch.

    Args:
        path: destination, e.g. ``bundle/models/mae_encoder.pth``.
        interval: epochs between exports (0: only at the end).
    """

    def __init__(self, path: str | Path, interval: int = 0) -> None:
        self.path = Path(path)
        self.interval = int(interval)
        self.exported_epochs: list[int] = []

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if self.exported_epochs and self.exported_epochs[-1] == epoch:
            return
        network = _unwrap(engine.network)
        network.save_encoder(self.path, epoch=epoch)
        self.exported_epochs.append(epoch)
        arch = network.architecture["arch"]
        logger.info(
            "MAE encoder (arch %r, epoch %d) exported to %s; use it with FrozenMaeEncoder(arch=%r, checkpoint=...) "
            "or --mae_arch %s --mae_checkpoint %s",
            arch,
            epoch,
            self.path,
            arch,
            arch,
            self.path,
        )
