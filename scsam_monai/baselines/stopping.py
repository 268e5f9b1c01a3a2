"""Early stopping on the validation mean Dice, and the record of how a training run ended.

Every trainable row of the experiments gets the same budget of training samples (``planning.plan_budget``); this
handler stops a row earlier when its validation mean Dice has not improved for ``patience`` validations (MONAI's
``EarlyStopHandler``, run when the evaluator completes), and writes ``training_budget.json`` at the end of training: the
optimizer steps, the samples seen, the best validation and whether the run stopped early or used its budget. The
experiments' ``results.md`` reads that file; nothing in it is estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler

from scsam_monai.atomic import atomic_write_json

__all__ = ["RECORD_FILENAME", "ValidationEarlyStopping", "batch_size_of", "read_record"]

RECORD_FILENAME = "training_budget.json"


def batch_size_of(batch: Any) -> int:
    """Number of samples in a training batch: a collated dict / sequence of tensors, a tensor, or a list of items."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.ndim:
                return int(value.shape[0])
        return 0
    if isinstance(batch, (list, tuple)) and batch:
        if all(isinstance(item, Mapping) for item in batch):
            return len(batch)  # decollated items
        return batch_size_of(batch[0])
    return 0


class ValidationEarlyStopping:
    """Stop training after ``patience`` validations without improvement; record steps, samples and the best epoch.

    The stopping itself is MONAI's ``EarlyStopHandler``; this adds the record. Attached to the trainer
    (``train#handlers``); it listens to ``validator`` itself, as ``LearningCurve`` does, so the bundle config needs
    no reference from the evaluator back to the trainer. A validation before training
    (``ValidationHandler(exec_at_start=True)``) counts as epoch 0. Every rank decides alike (the metric is
    reduced over ranks); rank 0 writes the record.

    Args:
        validator: the evaluator whose key metric decides.
        patience: validations without improvement before stopping; None or 0: never stop early (the record is
            still written).
        metric_name: the evaluator's metric (higher is better).
        min_delta: an increase of at most this much does not count as an improvement.
        output_dir: folder of ``training_budget.json``; None: write nothing.
        budget_samples: the training samples this run was planned for, copied into the record.
    """

    def __init__(
        self,
        validator: Engine,
        patience: int | None = None,
        metric_name: str = "val_mean_dice",
        min_delta: float = 0.0,
        output_dir: str | Path | None = None,
        budget_samples: int | None = None,
    ) -> None:
        if patience is not None and patience < 0:
            raise ValueError(f"patience must be >= 0 validations (0 or None: no early stopping), got {patience}.")
        self.validator = validator
        self.patience = int(patience) if patience else None
        self.metric_name = metric_name
        self.min_delta = float(min_delta)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.budget_samples = budget_samples
        self.samples = 0
        self.validations: list[tuple[int, float]] = []
        self._stopper: EarlyStopHandler | None = None
        self._trainer: Engine | None = None

    def _score(self, validator: Engine) -> float:
        value = validator.state.metrics.get(self.metric_name)
        if value is None:
            raise KeyError(f"early stopping: the evaluator has no metric {self.metric_name!r}.")
        value = float(value)
        return -math.inf if math.isnan(value) else value

    def attach(self, trainer: Engine) -> None:
        self._trainer = trainer
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        # recorded before the stopper runs, so the record holds the validation that triggered a stop
        self.validator.add_event_handler(Events.COMPLETED, self._record_validation)
        if self.patience:
            self._stopper = EarlyStopHandler(
                patience=self.patience, score_function=self._score, trainer=trainer, min_delta=self.min_delta
            )
            # at the evaluator's COMPLETED, not EarlyStopHandler.attach's EPOCH_COMPLETED: after every metric and
            # handler of the validation has run
            self.validator.add_event_handler(Events.COMPLETED, self._stopper)
        trainer.add_event_handler(Events.COMPLETED, self._write)

    def _count(self, trainer: Engine) -> None:
        self.samples += batch_size_of(trainer.state.batch) * idist.get_world_size()

    def _record_validation(self, validator: Engine) -> None:
        epoch = int(self._trainer.state.epoch) if self._trainer is not None else 0
        self.validations.append((epoch, self._score(validator)))

    @property
    def triggered(self) -> bool:
        """Whether the early-stopping rule fired (its counter reached the patience)."""
        # EarlyStopHandler keeps Ignite's EarlyStopping, whose counter is the validations without a gain
        stopping = getattr(self._stopper, "_handler", None)
        return stopping is not None and stopping.counter >= stopping.patience

    def record(self, trainer: Engine) -> dict[str, Any]:
        """How the run went: steps, samples, epochs, best validation, and why it ended."""
        best_epoch, best_score = None, None
        if self.validations:
            best_epoch, best_score = max(self.validations, key=lambda v: (v[1], -v[0]))  # first of the best
        max_epochs = int(trainer.state.max_epochs or 0)
        epochs = int(trainer.state.epoch)
        stopped_early = self.triggered and epochs < max_epochs
        plural = "s" if self.patience != 1 else ""
        if stopped_early:
            reason = f"early stopping: no {self.metric_name} gain in {self.patience} validation{plural}"
        elif epochs >= max_epochs:
            reason = "budget used (max_epochs reached)"
            if self.triggered:
                reason += f"; no {self.metric_name} gain in the last {self.patience} validation{plural} either"
        else:
            reason = "ended before max_epochs (interrupted or terminated by another handler)"
        return {
            "metric_name": self.metric_name,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "budget_samples": self.budget_samples,
            "samples_seen": int(self.samples),
            "optimizer_steps": int(trainer.state.iteration),
            "epochs": epochs,
            "max_epochs": max_epochs,
            "validations": len(self.validations),
            "best_epoch": best_epoch,
            "best_score": None if best_score is None or math.isinf(best_score) else best_score,
            "stopped_early": stopped_early,
            "stop_reason": reason,
        }

    def _write(self, trainer: Engine) -> None:
        if self.output_dir is not None and idist.get_rank() == 0:
            atomic_write_json(self.output_dir / RECORD_FILENAME, self.record(trainer))


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``training_budget.json`` a run wrote into ``run_dir``, or None when it wrote none."""
    import json

    path = Path(run_dir) / RECORD_FILENAME
    return json.loads(path.read_text()) if path.is_file() else None
