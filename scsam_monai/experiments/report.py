"""Results of the experiments: ``results.csv``, ``results.md`` (one table per group), and the two figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_save_figure, atomic_write_text
from ..engines.handlers import _CLASS_COLOURS, _colourise, _display, _matplotlib
from .registry import GROUPS

__all__ = ["SCORE_COLUMNS", "table_rows", "write_csv", "format_markdown", "plot_learning_curves", "plot_qualitative"]

#: Score columns in the paper's order (Dice per class is inserted before ``dice_mean``).
SCORE_COLUMNS = ("challenge_iou", "miou", "aji")
_COST_COLUMNS = ("trainable_parameters", "time_to_best_s", "best_epoch", "inference_s_per_image")


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
    return f"{float(value):.4f}"


def format_markdown(rows: Sequence[Mapping], class_names: Sequence[str], header: Sequence[str] = ()) -> str:
    """``results.md``: the header lines, then one table per group in the paper's layout plus the costs."""
    dice_columns = [(_dice_column(n), f"Dice {n}") for n in class_names[1:]]
    columns = [
        ("challenge_iou", "Challenge IoU", "score"),
        ("miou", "mIoU", "score"),
        ("aji", "AJI", "score"),
        *((key, title, "score") for key, title in dice_columns),
        ("dice_mean", "Dice (mean)", "score"),
        ("trainable_parameters", "trainable params", "params"),
        ("time_to_best_s", "time to best val Dice (s)", "seconds"),
        ("best_epoch", "best epoch", "int"),
        ("inference_s_per_image", "inference (s/image)", "seconds"),
    ]
    lines = ["# Experiments", "", *header, ""]
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
    """Mean validation Dice by epoch, one line per method (``{label: {"epoch": [...], "val_dice": [...]}}``)."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20")
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(curve["epoch"], curve["val_dice"], marker="o", markersize=3, color=colours(i % 20), label=label)
    ax.set(xlabel="epoch (0 = untrained)", ylabel="mean validation Dice", title="Learning curves", ylim=(0, 1))
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
    plt = _matplotlib()
    titles = ["image", "ground truth", *predictions]
    rows, cols = len(images), len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.5), squeeze=False)
    for r, (image, label) in enumerate(zip(images, labels, strict=True)):
        panels = [np.repeat(_display(image)[..., None], 3, axis=-1), _colourise(image, label)]
        panels += [_colourise(image, preds[r]) for preds in predictions.values()]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=7)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=_CLASS_COLOURS[(i - 1) % len(_CLASS_COLOURS)])
        for i in range(1, len(class_names))
    ]
    fig.legend(handles, list(class_names[1:]), loc="lower center", ncol=max(len(handles), 1), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = atomic_save_figure(path, fig, dpi=100)
    plt.close(fig)
    return out
