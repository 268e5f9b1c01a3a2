"""End to end: the bundle's training, evaluation and inference on the tiny profile, through MONAI's bundle runner.

Uses a small synthetic data set and the tiny random-weight encoders (demo profile, shortened), and checks the
files a user gets and that training improves validation Dice clearly over its untrained value.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
import torch

from tests.helpers import run_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_demo_bundle):
    return trained_demo_bundle


def test_training_saves_model_and_improves_validation_dice(trained):
    work, _, result = trained
    out = work / "out"
    assert (out / "models" / "model.pt").is_file()
    assert (out / "models" / "training" / "checkpoint_final.pt").is_file()
    assert [p.name for p in (out / "models").glob("*.pt")] == ["model.pt"]  # only what can be served
    assert (out / "learning_curve.png").stat().st_size > 1000
    curve = json.loads((out / "learning_curve.json").read_text())
    assert curve["val_epoch"][0] == 0  # the untrained value, measured before the first epoch
    untrained, best = curve["val_metric"][0], max(curve["val_metric"][1:])
    assert best > untrained + 0.1, curve
    assert curve["train_loss"][-1] < curve["train_loss"][0]
    assert "Trainable parameters" in result.stdout + result.stderr
    assert "RANDOM weights" in result.stdout + result.stderr  # honest about the demo encoders
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("mask_decoder.") for k in state)


# the embedding dataset's summary line: "Embedding cache <root>: <n> embeddings computed, <n> reused, <n> records."
CACHE_LINE = re.compile(r"Embedding cache .*?: (\d+) embeddings computed, (\d+) reused, (\d+) records\.")


def test_second_training_run_reuses_the_embedding_cache(trained):
    work, overrides, _ = trained
    result = run_bundle("precompute", ["train.yaml", "demo.yaml"], overrides, cwd=work)
    counts = [tuple(map(int, m)) for m in CACHE_LINE.findall(result.stdout + result.stderr)]
    assert counts, "no embedding-cache summary in the log"
    for computed, reused, records in counts:  # every embedding (one per stream) read back, none computed again
        assert computed == 0 and reused >= records > 0, counts


def test_evaluation_writes_metrics_and_overlay_of_the_trained_head(trained):
    work, overrides, _ = trained
    run_bundle("evaluating", ["train.yaml", "evaluate.yaml", "demo.yaml"], overrides, cwd=work)
    out = work / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("challenge_iou", "iou", "mc_iou", "miou", "aji", "dice_mean"):
        assert key in metrics
    assert set(metrics["dice_per_class"]) == {"nucleus", "mitochondria", "granules"}
    assert metrics["split"] == "test" and metrics["num_images"] == 2
    assert 0.0 < metrics["dice_mean"] <= 1.0
    assert "| dice_mean |" in (out / "metrics.md").read_text()
    assert (out / "overlay.png").stat().st_size > 1000

    # the evaluated head is the trained one: on the validation split, evaluation scores models/model.pt (the best
    # validation epoch) as training validated it, clearly above the untrained head's value (epoch 0 of the curve)
    validation = {**overrides, "output_dir": work / "eval_validation", "ckpt_dir": out / "models"}
    validation["eval_split"] = "validation"
    run_bundle("evaluating", ["train.yaml", "evaluate.yaml", "demo.yaml"], validation, cwd=work)
    scores = json.loads((work / "eval_validation" / "metrics.json").read_text())
    curve = json.loads((out / "learning_curve.json").read_text())
    untrained, best = curve["val_metric"][0], max(curve["val_metric"][1:])
    assert scores["split"] == "validation" and scores["dice_mean"] == pytest.approx(best, abs=1e-3), (scores, curve)
    assert scores["dice_mean"] > untrained + 0.1, (scores["dice_mean"], curve)


def _foreground_dice(predictions: list[np.ndarray], labels: list[np.ndarray]) -> dict[int, float]:
    """Dice per foreground class, pooled over the images (an all-background prediction scores 0 for every class)."""
    pred, label = np.stack(predictions), np.stack(labels)
    dice = {}
    for c in (1, 2, 3):
        both, total = ((pred == c) & (label == c)).sum(), (pred == c).sum() + (label == c).sum()
        dice[c] = float(2 * both / max(total, 1))
    return dice


def test_inference_writes_label_maps_at_image_size_that_find_the_organelles(trained):
    work, overrides, _ = trained
    # the synthetic slices carry no pixel size: the one training was told (the model's own would halve them)
    infer = {**overrides, "input_pixel_size": overrides["pixel_size"]}
    run_bundle("inference", ["train.yaml", "inference.yaml", "demo.yaml"], infer, cwd=work)
    predictions = sorted((work / "out" / "predictions").glob("*_seg.tif"))
    assert [p.name for p in predictions] == ["test_000_seg.tif", "test_001_seg.tif"]
    labels = [tifffile.imread(p) for p in predictions]
    truth = [tifffile.imread(work / "data" / "labels" / p.name.replace("_seg", "")) for p in predictions]
    for label, true in zip(labels, truth, strict=True):
        assert label.shape == true.shape == (128, 128)
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        assert (label > 0).mean() > 0.02, np.bincount(label.ravel(), minlength=4)  # foreground, not all background
    # against the ground truth: the trained demo head reaches about 0.2 (0.4 mitochondria, 0.25 granules, nuclei
    # barely found); an all-background map scores 0
    dice = _foreground_dice(labels, truth)
    assert sum(dice.values()) / 3 > 0.1, dice
    assert (work / "out" / "predictions" / "inference_overlay.png").is_file()
