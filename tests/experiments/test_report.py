"""The results table writer: rows per group, the paper's columns, CSV and Markdown."""

from __future__ import annotations

import csv
import math

from scsam_monai.experiments.report import format_markdown, table_rows, write_csv

CLASSES = ["background", "nucleus", "mitochondria", "granules"]


def _record(name, groups, dice_mean, params, **extra):
    scores = {
        "challenge_iou": 0.5,
        "miou": 0.4,
        "aji": math.nan,
        "dice_mean": dice_mean,
        "dice": {1: 0.9, 2: 0.5, 3: math.nan},
    }
    return {"name": name, "kind": "scsam", "groups": groups, "scores": scores, "trainable_parameters": params, **extra}


RECORDS = [
    _record("scsam", {"main": "ScSAM", "lambda": "lambda = 0.2 (ScSAM)"}, 0.7, 27_600_000, time_to_best_s=12.5),
    _record("lambda_0.1", {"lambda": "lambda = 0.1"}, 0.6, 27_600_000, seed=3, config_files=["a.yaml", "b.yaml"]),
    _record("unet", {"supervised": "UNet"}, 0.5, 1_630_000, inference_s_per_image=0.02),
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
    assert text.count("| method | Challenge IoU | mIoU | AJI | Dice nucleus | Dice mitochondria | Dice granules |") == 3
    assert "## Main comparison" in text and "## Ablation: weight lambda" in text and "## Ablation: fusion" not in text
    line = next(row for row in text.splitlines() if row.startswith("| ScSAM |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["0.5000", "0.4000", "n/a"]  # NaN AJI is "n/a"
    assert "27.60M" in cells and "12.50" in cells
    assert "| UNet |" in text and "1.63M" in text


def test_csv_round_trips_with_empty_cells_for_undefined_values(tmp_path):
    path = write_csv(tmp_path / "results.csv", table_rows(RECORDS, CLASSES))
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert rows[0]["aji"] == "" and rows[0]["dice_granules"] == ""
    assert float(rows[0]["dice_mean"]) == 0.7 and int(rows[1]["trainable_parameters"]) == 1_630_000
