"""Aggregation of experiment rows over seeds (experiments/seed_summary.py)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from experiments.seed_summary import (
    GOAL,
    GOAL_SEEDS,
    aggregate_seeds,
    flat_scores,
    format_summary,
    main,
    mean_std,
    read_seed_records,
)

CLASSES = ["mito", "syn"]


def _record(name: str, label: str, dice: tuple[float, float], aji: float, **extra) -> dict:
    scores = {
        "dice_mean": sum(dice) / 2,
        "miou": 0.4,
        "mc_iou": 0.3,
        "challenge_iou": 0.35,
        "aji": aji,
        "dice": {"1": dice[0], "2": dice[1]},
        "class_iou": {"1": dice[0] / 2, "2": float("nan")},
    }
    return {"name": name, "groups": {"main": label}, "scores": scores, "optimizer_steps": 10, "samples_seen": 80,
            "best_epoch": 3, "stop_reason": "budget", **extra}  # fmt: skip


def _write(out, seed: int, record: dict, group: str = "") -> None:
    path = out / f"seed_{seed}" / group / "runs" / record["name"] / "row.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_mean_std_is_the_sample_deviation_and_none_for_one_value():
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.1, 0.2, 0.6])
    assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt(0.07))
    with pytest.raises(ValueError):
        mean_std([])


def test_flat_scores_names_classes_and_drops_nan():
    flat = flat_scores(_record("m", "M", (0.6, 0.2), 0.1)["scores"], CLASSES)
    assert flat["dice_mito"] == 0.6 and flat["dice_syn"] == 0.2 and flat["iou_mito"] == 0.3
    assert "iou_syn" not in flat and flat["aji"] == 0.1


def test_aggregate_gives_mean_std_per_row_and_the_mae_gain_per_seed():
    records = {
        "0": {"mae_only": _record("mae_only", "MAE*", (0.6, 0.4), 0.2),
              "mae_only_random": _record("mae_only_random", "MAE* (random MAE)", (0.5, 0.3), 0.1)},
        "1": {"mae_only": _record("mae_only", "MAE*", (0.8, 0.4), 0.4),
              "mae_only_random": _record("mae_only_random", "MAE* (random MAE)", (0.5, 0.5), 0.1)},
        "2": {},  # a seed that finished nothing is left out
    }  # fmt: skip
    summary = aggregate_seeds(records, CLASSES)
    assert summary["seeds"] == ["0", "1"]
    mae = summary["rows"]["mae_only"]
    assert mae["label"] == "MAE*" and mae["seeds"] == ["0", "1"]
    assert mae["scores"]["dice_mito"]["mean"] == pytest.approx(0.7)
    assert mae["scores"]["dice_mito"]["std"] == pytest.approx(math.sqrt(0.02))
    assert mae["scores"]["aji"]["values"] == [0.2, 0.4]
    assert mae["training"]["1"]["stop_reason"] == "budget"
    gain = summary["mae_gain"]
    assert gain["values"] == pytest.approx([0.1, 0.1]) and gain["mean"] == pytest.approx(0.1)
    assert gain["std"] == pytest.approx(0.0, abs=1e-12)
    assert not gain["goal_met"]  # +0.1 is enough, two seeds are not


def _gain_records(gains: list[float]) -> dict[str, dict[str, dict]]:
    """One seed per gain: MAE* beats its random twin by ``gain`` in mean Dice."""
    return {
        str(seed): {
            "mae_only": _record("mae_only", "MAE*", (0.5 + gain, 0.5 + gain), 0.2),
            "mae_only_random": _record("mae_only_random", "MAE* (random MAE)", (0.5, 0.5), 0.2),
        }
        for seed, gain in enumerate(gains)
    }


@pytest.mark.parametrize(
    ("gains", "met"),
    [
        ([0.06, 0.06, 0.06], True),  # at least 0.05 over at least 3 seeds
        ([0.06, 0.05, 0.07, 0.04], True),  # the mean counts, not every seed
        ([0.1, 0.1], False),  # a large gain over too few seeds
        ([0.1], False),
        ([0.04, 0.05, 0.05], False),  # enough seeds, too small a gain
    ],
)
def test_the_mae_goal_needs_the_gain_over_enough_seeds(gains, met):
    gain = aggregate_seeds(_gain_records(gains), CLASSES)["mae_gain"]
    assert gain["goal"] == GOAL == 0.05 and gain["goal_seeds"] == GOAL_SEEDS == 3
    assert gain["mean"] == pytest.approx(sum(gains) / len(gains))
    assert gain["goal_met"] is met
    text = format_summary(aggregate_seeds(_gain_records(gains), CLASSES))
    verdict = text.splitlines()[-1]
    assert verdict.endswith(": met.") is met and ("not met" in verdict) is not met, verdict
    if len(gains) < 3:
        assert f"({len(gains)} of the 3 seeds it needs)" in verdict


def test_main_reads_rows_of_every_process_skips_failed_ones_and_writes_the_summary(tmp_path, capsys):
    _write(tmp_path, 0, _record("mae_only", "MAE*", (0.5, 0.5), 0.2))
    curve = {"epoch": [0, 1], "samples": [0, 8], "val_dice": [0.1, 0.3]}
    _write(tmp_path, 0, _record("mae_only_random", "MAE* (random MAE)", (0.5, 0.48), 0.2, curve=curve), "random")
    _write(tmp_path, 0, {"name": "unet", "error": "RuntimeError: boom"}, "unet")
    (tmp_path / "seed_0" / "results.json").write_text(json.dumps({"class_names": ["background", *CLASSES]}))
    assert set(read_seed_records(tmp_path, [0])["0"]) == {"mae_only", "mae_only_random"}
    assert main([str(tmp_path), "0", "1"]) == 0
    assert "seed_1" in capsys.readouterr().err  # the missing seed is named
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["class_names"] == CLASSES and summary["mae_gain"]["std"] is None
    assert not summary["mae_gain"]["goal_met"]  # +0.01 < 0.05
    with open(tmp_path / "summary.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert float(rows["mae_only"]["dice_mito_mean"]) == pytest.approx(0.5) and rows["mae_only"]["dice_mito_std"] == ""
    text = (tmp_path / "summary.md").read_text()
    assert "| MAE* | 1 | 0.500 |" in text and "one seed: no spread" in text and "not met" in text
    assert (tmp_path / "learning_curves_seed_0.png").stat().st_size > 0
