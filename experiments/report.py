"""Results of the experiments: ``results.csv``, ``results.md`` (one table per group), and the two figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from experiments.registry import GROUPS
from scsam_monai.atomic import atomic_save_figure, atomic_write_text
from scsam_monai.engines.curves import headless_pyplot
from scsam_monai.palette import class_colour, colourise, display_image

__all__ = [
    "SCORE_COLUMNS",
    "COLUMN_DEFINITIONS",
    "budget_lines",
    "weights_lines",
    "table_rows",
    "write_csv",
    "format_markdown",
    "plot_learning_curves",
    "plot_qualitative",
]

#: Score columns in the paper's order (Dice per class is inserted before ``dice_mean``): the pooled IoU and the
#: class-mean IoU side by side, since "mIoU" is used for both in the literature.
SCORE_COLUMNS = ("challenge_iou", "miou", "mc_iou", "aji")
_COST_COLUMNS = (
    "trainable_parameters",
    "optimizer_steps",
    "samples_seen",
    "best_epoch",
    "stopped_early",
    "time_to_best_s",
    "inference_s_per_image",
)

#: What each column of results.md means (scsam_monai.metrics.segmentation_scores has the exact rules).
COLUMN_DEFINITIONS = (
    "Challenge IoU: per image, the mean IoU over the classes in its ground truth, then the mean over images "
    "(ISINet / SurgicalSAM)",
    "pooled IoU (`miou`): the sum of intersections over the sum of unions of all images and classes",
    "mcIoU (`mc_iou`): per class, the mean IoU over the images where it appears, then the mean over classes "
    "(SurgicalSAM's mean class IoU); compare a paper's \"mIoU\" with the column of the same definition",
    "AJI: aggregated Jaccard index of the 8-connected instances of each class, averaged like mcIoU",
    "Dice: per class pooled over all test images; Dice (mean): their mean over classes",
    "steps: optimizer steps the row took; images seen: training samples it saw (one augmented view of one "
    "slice each); best epoch: the epoch whose validation mean Dice was best (its weights are tested); "
    "stop: `early` when early stopping ended the row, `budget` when it used its whole budget",
)


def _dice_column(name: str) -> str:
    return "dice_" + "".join(c if c.isalnum() else "_" for c in name.lower())


def table_rows(records: Sequence[Mapping], class_names: Sequence[str]) -> list[dict]:
    """One flat row per (group, method), groups in the order of ``GROUPS``, methods in run order.

    Each record is a run's summary (``name``, ``kind``, ``groups`` (group -> label), ``scores``, costs, ``seed``,
    ``config_files``); a record that appears in several groups gives a row in each.
    """
    rows = []
    for group in GROUPS:
        for record in records:
            label = record.get("groups", {}).get(group)
            if label is None:
                continue
            scores = record.get("scores") or {}
            row = {"group": group, "method": record["name"], "label": label, "kind": record.get("kind", "")}
            for key in SCORE_COLUMNS:
                row[key] = scores.get(key)
            dice = scores.get("dice") or {}
            for index, name in enumerate(class_names[1:], start=1):
                row[_dice_column(name)] = dice.get(index, dice.get(str(index)))
            row["dice_mean"] = scores.get("dice_mean")
            for key in _COST_COLUMNS:
                row[key] = record.get(key)
            row["seed"] = record.get("seed")
            row["config"] = " ".join(record.get("config_files", ()))
            rows.append(row)
    return rows


def budget_lines(budget_per_slice: int, views_per_image: int, patience: int) -> list[str]:
    """results.md header: the training budget every trainable row got, and the early-stopping rule."""
    line = (
        f"- budget: {budget_per_slice} training samples per training slice for every trainable row (one sample = one "
        f"augmented view of one slice): ScSAM-type rows {budget_per_slice // views_per_image} epochs of their "
        f"{views_per_image} cached views, supervised rows {budget_per_slice} epochs of one view; every row validates "
        "after the same samples"
    )
    if patience:
        return [f"{line} and stops early after {patience} validations without a gain of validation mean Dice"]
    return [f"{line}; no early stopping"]


def weights_lines(notes: Sequence[str], *, tiny: bool) -> list[str]:
    """results.md header: which encoders have random weights, and what that means for the numbers."""
    if not notes:
        return []
    meaning = (
        "these numbers show that every row runs end to end; they are not results"
        if tiny
        else "rows that embed with it train a head on random features: they do not measure the pretrained model"
    )
    return [f"- **{'; '.join(notes)}**: {meaning}."]


def _csv_value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(path: str | Path, rows: Sequence[Mapping]) -> Path:
    """Write the rows as CSV (empty cells for undefined values), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return atomic_write_text(path, buffer.getvalue())


def _fmt(value: object, kind: str = "score") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "params":
        return f"{int(value) / 1e6:.2f}M"
    if kind == "seconds":
        return f"{float(value):.2f}" if float(value) < 100 else f"{float(value):.0f}"
    if kind == "int":
        return str(int(value))
    if kind == "stop":
        return "early" if value else "budget"
    return f"{float(value):.4f}"


def format_markdown(rows: Sequence[Mapping], class_names: Sequence[str], header: Sequence[str] = ()) -> str:
    """``results.md``: the header lines, then one table per group in the paper's layout plus the costs."""
    dice_columns = [(_dice_column(n), f"Dice {n}") for n in class_names[1:]]
    columns = [
        ("challenge_iou", "Challenge IoU", "score"),
        ("miou", "pooled IoU", "score"),
        ("mc_iou", "mcIoU", "score"),
        ("aji", "AJI", "score"),
        *((key, title, "score") for key, title in dice_columns),
        ("dice_mean", "Dice (mean)", "score"),
        ("trainable_parameters", "trainable params", "params"),
        ("optimizer_steps", "steps", "int"),
        ("samples_seen", "images seen", "int"),
        ("best_epoch", "best epoch", "int"),
        ("stopped_early", "stop", "stop"),
        ("time_to_best_s", "time to best val Dice (s)", "seconds"),
        ("inference_s_per_image", "inference (s/image)", "seconds"),
    ]
    lines = ["# Experiments", "", *header, "", "Columns:", "", *(f"- {d}" for d in COLUMN_DEFINITIONS), ""]
    for group, title in GROUPS.items():
        group_rows = [r for r in rows if r["group"] == group]
        if not group_rows:
            continue
        lines += [f"## {title}", "", "| method | " + " | ".join(c[1] for c in columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for row in group_rows:
            cells = [_fmt(row.get(key), kind) for key, _, kind in columns]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_learning_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """Mean validation Dice by training samples seen, one line per method.

    ``{label: {"samples": [...], "epoch": [...], "val_dice": [...]}}``: rows with different epochs per sample
    (ScSAM's cached views against the supervised rows' one view) share the samples axis; without ``samples``
    for every curve the axis is the epoch.
    """
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20")
    by_samples = bool(curves) and all("samples" in c for c in curves.values())
    x_key = "samples" if by_samples else "epoch"
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(curve[x_key], curve["val_dice"], marker="o", markersize=3, color=colours(i % 20), label=label)
    xlabel = "training samples seen (0 = untrained)" if by_samples else "epoch (0 = untrained)"
    ax.set(xlabel=xlabel, ylabel="mean validation Dice", title="Learning curves", ylim=(0, 1))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    out = atomic_save_figure(path, fig)
    plt.close(fig)
    return out


def plot_qualitative(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    class_names: Sequence[str],
    path: str | Path,
) -> Path:
    """A grid with one row per test image: image | ground truth | each method's prediction (class overlays)."""
    plt = headless_pyplot()
    titles = ["image", "ground truth", *predictions]
    rows, cols = len(images), len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.5), squeeze=False)
    for r, (image, label) in enumerate(zip(images, labels, strict=True)):
        panels = [np.repeat(display_image(image)[..., None], 3, axis=-1), colourise(image, label)]
        panels += [colourise(image, preds[r]) for preds in predictions.values()]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=class_colour(i)) for i in range(1, len(class_names))]
    fig.legend(handles, list(class_names[1:]), loc="lower center", ncol=max(len(handles), 1), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = atomic_save_figure(path, fig, dpi=100)
    plt.close(fig)
    return out
