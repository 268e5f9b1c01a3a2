"""The experiment runner on real EM: the ssTEM sample of ../shared/data, prepared by scsam-prepare.

A subset of the methods (ScSAM, a supervised UNet, zero-shot SAM) on the tiny profile, to show that one command
turns a prepared real-EM datalist into the tables and figures; the whole method list runs on synthetic data in
``test_run_experiments.py``. Skips when the sample is absent.
"""

from __future__ import annotations

import csv
import sys

import pytest
from PIL import Image

from tests.helpers import REAL_EM_SAMPLE as SAMPLE
from tests.helpers import run_command

pytestmark = pytest.mark.slow

CLASSES = ["mitochondria", "synapses", "membranes"]
QUIET = {"PYTHONWARNINGS": "ignore"}


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="real EM sample ../shared/data/drosophila-vnc-sstem absent")
def test_one_command_writes_the_comparison_on_real_em(tmp_path, repo_root):
    data = tmp_path / "sstem"
    masks = [a for c in CLASSES for a in ("--mask", f"{c}={SAMPLE / c}")]
    run_command([sys.executable, str(repo_root / "scripts/prepare_data.py"), "--image", str(SAMPLE / "raw"), *masks,
                 "--train-slices", "0:8", "--val-slices", "11:14", "--test-slices", "16:20", "--downscale", "4",
                 "--out", str(data), "--quiet"], cwd=tmp_path, env=QUIET)  # fmt: skip
    out = tmp_path / "out"
    run_command([sys.executable, str(repo_root / "scripts/run_experiments.py"),
                 "--datalist", str(data / "datalist.json"), "--profile", "tiny", "--out", str(out),
                 "--methods", "scsam,unet,zero_shot_sam", "--override", "image_normalization=prepared"],
                cwd=tmp_path, env=QUIET, timeout=1800)  # fmt: skip
    with open(out / "results.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"scsam", "unet", "zero_shot_sam"}
    for row in rows.values():  # the datalist's own classes, scored on its test split
        for name in CLASSES:
            assert row[f"dice_{name}"] != "" and 0.0 <= float(row[f"dice_{name}"]) <= 1.0, (row["method"], name)
    text = (out / "results.md").read_text()
    assert "Dice mitochondria" in text and "| ScSAM |" in text and "| UNet |" in text
    for name in ("learning_curves.png", "qualitative.png"):
        with Image.open(out / name) as image:
            image.load()
