"""Per-epoch training curves: one implementation of "record, checkpoint, write JSON and PNG" for every trainer.

:class:`EpochHistory` is the base of the head training's ``LearningCurve`` (:mod:`scsam_monai.engines.handlers`)
and the MAE pre-training's ``LossHistory`` (:mod:`scsam_monai.mae.handlers`); :func:`headless_pyplot` is the one
place that selects matplotlib's file-only backend, for every figure the package writes.

The lines are drawn by MONAI's ``plot_metric_graph`` (``monai.utils.jupyter_utils``). The recording is ours:
MONAI's ``MetricLogger`` keeps one ``(iteration, value)`` pair per iteration and records an evaluator's metrics
against the trainer's iteration, while these curves are means per epoch with a validation before training as
epoch 0; and its ``state_dict`` is keyed by an ``Enum``, which ``torch.load(weights_only=True)`` refuses, so it
could not travel in the resumable checkpoint (:mod:`scsam_monai.engines.resume`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from scsam_monai.atomic import atomic_save_figure, atomic_write_json

__all__ = ["EpochHistory", "headless_pyplot", "plot_series"]


def headless_pyplot():
    """``matplotlib.pyplot`` on the Agg backend (figures are written to files, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_series(
    ax: Any,
    title: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Draw ``series`` (legend name -> (x values, y values)) into ``ax`` with MONAI's ``plot_metric_graph``.

    One line per non-empty series, its last value in the legend, a linear y axis; markers while a series has
    fewer than 50 points.

    Args:
        ax: the matplotlib axes.
        title: the axes' title.
        series: the lines, by legend name.
        xlabel: label of the x axis.
        ylabel: label of the y axis.
        styles: matplotlib line properties per legend name (colour, line style).
    """
    headless_pyplot()  # before MONAI's module imports pyplot
    from monai.utils.jupyter_utils import plot_metric_graph

    graph = {name: list(zip(x, y, strict=True)) for name, (x, y) in series.items() if len(x) and len(x) == len(y)}
    if graph:
        plot_metric_graph(ax, title, graph, yscale="linear", avg_keys=())
        for line, (name, points) in zip(ax.get_lines(), graph.items(), strict=True):  # one line per series
            line.set(**{"marker": "o" if len(points) < 50 else "", **(styles or {}).get(name, {})})
        ax.legend(loc="best", fontsize=8)  # again, with the styles
    else:
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax.set(xlabel=xlabel, ylabel=ylabel)


class EpochHistory:
    """Per-epoch history of an Ignite engine: means of iteration outputs, checkpointable, written as JSON and PNG.

    Attach it to the trainer. Each iteration it collects the ``output_keys`` of ``engine.state.output`` (a dict);
    at the end of each epoch it appends :meth:`epoch_values` to the history and writes ``<stem>.json``
    (:meth:`json_record`) and ``<stem>.png`` (:meth:`draw`), atomically. ``state_dict``/``load_state_dict`` hold
    the history, so that a run resumed from a checkpoint continues the same curve. Subclasses name the history's
    lists (``fields``, the ``state_dict`` keys) and say what an epoch adds and how it is drawn.

    Args:
        output_dir: folder of the JSON and PNG files.
        stem: their file name stem.
    """

    #: the lists of the history (the ``state_dict`` keys)
    fields: tuple[str, ...] = ()
    #: keys of the iteration output averaged per epoch
    output_keys: tuple[str, ...] = ("loss",)

    def __init__(self, output_dir: str | Path, stem: str) -> None:
        self.output_dir = Path(output_dir)
        self.stem = stem
        self.history: dict[str, list] = {name: [] for name in self.fields}
        self._iteration_values: dict[str, list[float]] = {key: [] for key in self.output_keys}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record_epoch)

    def state_dict(self) -> dict[str, list]:
        """The history, for checkpoints."""
        return {name: list(values) for name, values in self.history.items()}

    def load_state_dict(self, state: Mapping[str, Sequence]) -> None:
        """Restore the history of a checkpoint (lists a checkpoint of an older version lacks stay empty)."""
        self.history = {name: list(state.get(name, [])) for name in self.fields}

    def epoch_mean(self, key: str) -> float:
        """Mean of output ``key`` over the iterations of the current epoch (NaN when none reported it)."""
        values = self._iteration_values[key]
        return float(np.mean(values)) if values else math.nan

    def _start_epoch(self, _: Engine) -> None:
        for values in self._iteration_values.values():
            values.clear()

    def _record_iteration(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, Mapping):
            return
        for key in self.output_keys:
            if output.get(key) is not None:
                self._iteration_values[key].append(float(output[key]))

    def _record_epoch(self, engine: Engine) -> None:
        for name, value in self.epoch_values(engine).items():
            self.history[name].append(value)
        self.write()

    def epoch_values(self, engine: Engine) -> dict[str, Any]:
        """What the epoch that just completed adds to the history, by field."""
        raise NotImplementedError

    def json_record(self) -> dict[str, Any]:
        """The content of ``<stem>.json`` (the history by default)."""
        return self.state_dict()

    def draw(self, plt: Any) -> Any:
        """The figure of ``<stem>.png``, drawn with ``plt`` (``matplotlib.pyplot``)."""
        raise NotImplementedError

    def write(self) -> None:
        """Write ``<stem>.json`` and ``<stem>.png``."""
        atomic_write_json(self.output_dir / f"{self.stem}.json", self.json_record())
        plt = headless_pyplot()
        fig = self.draw(plt)
        atomic_save_figure(self.output_dir / f"{self.stem}.png", fig)
        plt.close(fig)
