"""End to end on real EM: ``scsam-prepare`` on the Drosophila ssTEM sample, then the bundle's training and evaluation.

The sample (``../shared/data/drosophila-vnc-sstem``: 20 sections, mitochondria masks with soft 8-bit edges and
some 1-bit sections, 1-bit synapse and membrane masks) is prepared with one ``--mask`` per class, split by
explicit slice ranges (sections 0-7 train, 11-13 validate; 8-10 are left out as a gap) and downscaled 4x;
the tiny random-weight profile then trains for two epochs and is evaluated. The manifest's per-class pixel
counts are checked against counts computed here, straight from the mask files, with the documented rule.
Skips when the sample is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import REAL_EM_SAMPLE as SAMPLE
from tests.helpers import run_bundle, run_command

pytestmark = pytest.mark.slow

CLASSES = ["mitochondria", "synapses", "membranes"]
TRAIN, VAL, FACTOR = list(range(0, 8)), list(range(11, 14)), 4


def _foreground(folder: Path, index: int) -> np.ndarray:
    """The documented rule, applied to one mask file: a 1-bit section is its bits; an 8-bit section of a folder
    that holds more than two distinct values (soft edges) is foreground at >= 128 (half of 255)."""
    image = Image.open(sorted(folder.glob("*.png"))[index])
    array = np.asarray(image)
    if image.mode == "1":
        return array.view(np.uint8) != 0
    return array >= 128


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, repo_root):
    if not (SAMPLE / "raw").is_dir():
        pytest.skip(f"real EM sample not found at {SAMPLE}")
    work = tmp_path_factory.mktemp("real_em")
    data = work / "drosophila"
    masks = [a for c in CLASSES for a in ("--mask", f"{c}={SAMPLE / c}")]
    cmd = [
        sys.executable,
        str(repo_root / "scripts/prepare_data.py"),
        "--image",
        str(SAMPLE / "raw"),
        *masks,
        "--train-slices",
        "0:8",
        "--val-slices",
        "11:14",
        "--downscale",
        str(FACTOR),
        "--out",
        str(data),
        "--quiet",
    ]
    log = run_command(cmd, cwd=work)
    return work, data, log


def test_prepare_writes_a_datalist_and_manifest_whose_counts_match_the_masks(prepared):
    _, data, log = prepared
    datalist = json.loads((data / "datalist.json").read_text())
    assert [d["slice"] for d in datalist["training"]] == TRAIN
    assert [d["slice"] for d in datalist["validation"]] == VAL
    assert datalist["labels"] == {"0": "background", "1": "mitochondria", "2": "synapses", "3": "membranes"}
    manifest = json.loads((data / "manifest.json").read_text())
    for split, indices in (("training", TRAIN), ("validation", VAL)):
        counts = np.zeros(4, np.int64)
        for i in indices:
            label = np.zeros((1024, 1024), np.int64)
            for k in range(len(CLASSES) - 1, -1, -1):  # overlaps: the class listed first wins
                label[_foreground(SAMPLE / CLASSES[k], i)] = k + 1
            counts += np.bincount(label[FACTOR // 2 :: FACTOR, FACTOR // 2 :: FACTOR].ravel(), minlength=4)
        assert list(manifest["pixel_counts"][split].values()) == counts.tolist(), split
        assert all(counts[1:] > 0)
    rules = {c: m["rule"] for c, m in manifest["cells"][0]["masks"].items()}
    assert "value >= 127.5" in rules["mitochondria"] and "two distinct values 0/1" in rules["membranes"]
    assert "1-bit" in manifest["cells"][0]["masks"]["mitochondria"]["notes"][0]  # mixed encodings, read as 0/255


def test_bundle_trains_and_evaluates_on_the_prepared_real_em(prepared, repo_root):
    work, data, _ = prepared
    out = work / "out"
    overlay = work / "real_em.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "class_names": ["background", *CLASSES],
                "dataset_dir": str(data),
                "output_dir": str(out),
                "views_per_image": 1,
                "train#batch_size": 4,
                "train#trainer#max_epochs": 2,
                "eval_split": "validation",
            }
        )
    )
    configs = repo_root / "bundle/configs"
    run_bundle("training", [configs / "train.yaml", configs / "demo.yaml", overlay], cwd=work)
    assert (out / "models" / "model.pt").is_file()
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("mask_decoder.") for k in state)
    curve = json.loads((out / "learning_curve.json").read_text())
    assert len(curve["val_metric"]) == 3  # untrained + 2 epochs
    evaluate = [configs / "train.yaml", configs / "evaluate.yaml", configs / "demo.yaml", overlay]
    run_bundle("evaluating", evaluate, cwd=work)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dice_per_class"]) == set(CLASSES)
    assert metrics["split"] == "validation" and metrics["num_images"] == len(VAL)
    assert 0.0 <= metrics["dice_mean"] <= 1.0
    # evaluation scores models/model.pt (the best validation epoch, epoch 0 = untrained included) exactly as training
    # validated it. Two epochs of the tiny random-weight profile do not beat the untrained head on this sample
    # (validation Dice 0.098 untrained, then 0.0 and 0.0), so the saved head may be the untrained one: this run
    # checks the wiring, not learning; the synthetic end-to-end test (test_bundle_workflow) checks learning.
    assert metrics["dice_mean"] == pytest.approx(max(curve["val_metric"]), abs=1e-3), (metrics, curve)
    assert curve["train_loss"][-1] < curve["train_loss"][0], curve
