"""The results table writer: rows per group, the paper's columns, CSV and Markdown."""

from __future__ import annotations

import csv
import math

from PIL import Image

from experiments import report
from experiments.report import (
    budget_lines,
    format_markdown,
    plot_learning_curves,
    table_rows,
    weights_lines,
    write_csv,
)

CLASSES = ["background", "nucleus", "mitochondria", "granules"]


def _record(name, groups, dice_mean, params, **extra):
    scores = {
        "challenge_iou": 0.5,
        "miou": 0.4,
        "mc_iou": 0.35,
        "aji": math.nan,
        "dice_mean": dice_mean,
        "dice": {1: 0.9, 2: 0.5, 3: math.nan},
    }
    return {"name": name, "kind": "scsam", "groups": groups, "scores": scores, "trainable_parameters": params, **extra}


RECORDS = [
    _record(
        "scsam",
        {"main": "ScSAM", "lambda": "lambda = 0.2 (ScSAM)"},
        0.7,
        27_600_000,
        time_to_best_s=12.5,
        optimizer_steps=120,
        samples_seen=960,
        best_epoch=7,
        stopped_early=True,
    ),
    _record("lambda_0.1", {"lambda": "lambda = 0.1"}, 0.6, 27_600_000, seed=3, config_files=["a.yaml", "b.yaml"]),
    _record("unet", {"supervised": "UNet"}, 0.5, 1_630_000, inference_s_per_image=0.02, stopped_early=False),
]


def test_a_method_in_several_groups_gives_a_row_in_each_in_group_order():
    rows = table_rows(RECORDS, CLASSES)
    assert [(r["group"], r["method"]) for r in rows] == [
        ("main", "scsam"),
        ("supervised", "unet"),
        ("lambda", "scsam"),
        ("lambda", "lambda_0.1"),
    ]
    assert rows[0]["dice_nucleus"] == 0.9 and rows[0]["dice_mitochondria"] == 0.5
    assert rows[3]["seed"] == 3 and rows[3]["config"] == "a.yaml b.yaml"


def test_markdown_has_one_table_per_group_with_the_papers_columns():
    text = format_markdown(table_rows(RECORDS, CLASSES), CLASSES, header=["- profile: tiny"])
    assert "- profile: tiny" in text
    head = "| method | Challenge IoU | pooled IoU | mcIoU | AJI | Dice nucleus | Dice mitochondria | Dice granules |"
    assert text.count(head) == 3
    assert "| trainable params | steps | images seen | best epoch | stop |" in text
    assert "## Main comparison" in text and "## Ablation: weight lambda" in text and "## Ablation: fusion" not in text
    line = next(row for row in text.splitlines() if row.startswith("| ScSAM |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:5] == ["0.5000", "0.4000", "0.3500", "n/a"]  # pooled and class-mean IoU; NaN AJI is "n/a"
    assert cells[9:14] == ["27.60M", "120", "960", "7", "early"] and "12.50" in cells
    unet = [c.strip() for c in next(r for r in text.splitlines() if r.startswith("| UNet |")).strip("|").split("|")]
    assert unet[9] == "1.63M" and unet[13] == "budget"


def test_markdown_says_which_definition_each_iou_column_uses():
    text = format_markdown(table_rows(RECORDS, CLASSES), CLASSES)
    assert "| mIoU |" not in text  # the ambiguous name is not a column
    definitions = {line.split(":")[0] for line in text.splitlines() if line.startswith("- ")}
    assert {"- Challenge IoU", "- pooled IoU (`miou`)", "- mcIoU (`mc_iou`)", "- AJI"} <= definitions
    assert "sum of intersections over the sum of unions" in text and "mean over classes" in text


def test_csv_round_trips_with_empty_cells_for_undefined_values(tmp_path):
    path = write_csv(tmp_path / "results.csv", table_rows(RECORDS, CLASSES))
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert rows[0]["aji"] == "" and rows[0]["dice_granules"] == ""
    assert float(rows[0]["dice_mean"]) == 0.7 and int(rows[1]["trainable_parameters"]) == 1_630_000
    assert float(rows[0]["mc_iou"]) == 0.35 and rows[0]["samples_seen"] == "960" and rows[0]["stopped_early"] == "True"


def _drawn_figures(monkeypatch) -> list:
    """The figures ``experiments.report`` saves from now on (kept for inspection after the module closes them)."""
    figures = []
    save = report.atomic_save_figure

    def keep(path, fig, **kwargs):
        figures.append(fig)
        return save(path, fig, **kwargs)

    monkeypatch.setattr(report, "atomic_save_figure", keep)
    return figures


def test_learning_curves_share_the_samples_axis(tmp_path, monkeypatch):
    """Rows with different epochs per sample are drawn on one axis of training samples, not of epochs."""
    curves = {
        "ScSAM": {"epoch": [0, 1, 2], "samples": [0, 40, 80], "val_dice": [0.1, 0.4, 0.5]},
        "UNet": {"epoch": [0, 4, 8], "samples": [0, 40, 80], "val_dice": [0.1, 0.3, 0.6]},
    }
    figures = _drawn_figures(monkeypatch)
    path = plot_learning_curves(curves, tmp_path / "curves.png")
    with Image.open(path) as image:
        image.load()
    (figure,) = figures
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(lines) == set(curves)
    for label, curve in curves.items():
        assert (
            list(lines[label].get_xdata()) == curve["samples"] and list(lines[label].get_ydata()) == curve["val_dice"]
        )
    assert axes.get_xlabel().startswith("training samples seen") and axes.get_ylim() == (0, 1)
    assert axes.get_xlim()[0] <= 0 and axes.get_xlim()[1] >= 80

    # without samples for every curve the shared axis is the epoch
    figures.clear()
    plot_learning_curves({**curves, "old": {"epoch": [0, 1], "val_dice": [0.2, 0.3]}}, tmp_path / "epochs.png")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    assert list(lines["UNet"].get_xdata()) == [0, 4, 8] and figures[0].axes[0].get_xlabel().startswith("epoch")


def test_header_states_the_budget_and_what_random_weights_mean():
    (line,) = budget_lines(32, 4, 4)
    assert "32 training samples per training slice" in line and "ScSAM-type rows 8 epochs" in line
    assert "supervised rows 32 epochs" in line and "after 4 validations" in line
    assert budget_lines(4, 2, 0)[0].endswith("no early stopping")
    assert weights_lines([], tiny=True) == []
    assert "not results" in weights_lines(["SAM encoder 'tiny' has RANDOM weights"], tiny=True)[0]
    assert "random features" in weights_lines(["SAM encoder 'tiny' has RANDOM weights"], tiny=False)[0]
