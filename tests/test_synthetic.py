"""Tests of the synthetic EM data set (``scsam_monai.synthetic``) and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from scsam_monai.cli.synthetic import main
from scsam_monai.synthetic import CLASS_NAMES, slice_seed, synthesize_slice, write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = {"num_train": 3, "num_val": 2, "num_test": 1, "size": 64, "seed": 5}


@pytest.fixture(scope="module")
def slices() -> list[tuple[np.ndarray, np.ndarray]]:
    """Twenty 128-pixel slices with seeds 0..19."""
    return [synthesize_slice(128, seed=s) for s in range(20)]


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_names_match_label_values():
    assert CLASS_NAMES == ("background", "nucleus", "mitochondria", "granules")


def test_slice_shapes_and_dtypes():
    image, label = synthesize_slice((96, 160), seed=1)
    assert image.shape == label.shape == (96, 160)
    assert image.dtype == label.dtype == np.uint8
    assert synthesize_slice(64)[0].shape == (64, 64)


def test_same_seed_same_slice_different_seed_different_slice():
    a_image, a_label = synthesize_slice(96, seed=7)
    b_image, b_label = synthesize_slice(96, seed=7)
    c_image, c_label = synthesize_slice(96, seed=8)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_label, b_label)
    assert not np.array_equal(a_image, c_image)
    assert not np.array_equal(a_label, c_label)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        synthesize_slice(16)
    with pytest.raises(ValueError):
        synthesize_slice(64, seed=-1)


def test_labels_are_class_indices_and_classes_are_frequent(slices):
    present = np.zeros(len(CLASS_NAMES))
    for _, label in slices:
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        present += [(label == c).any() for c in range(len(CLASS_NAMES))]
    fraction = present / len(slices)
    assert fraction[0] == 1.0
    assert fraction[2] == 1.0 and fraction[3] == 1.0  # every slice has mitochondria and granules
    assert 0.5 <= fraction[1] <= 1.0  # the nucleus is in most slices


def test_granules_are_many_separate_discs(slices):
    for _, label in slices:
        _, count = ndimage.label(label == 3)
        assert count >= 5


def test_granules_have_dark_core_and_light_halo(slices):
    darker, lighter = [], []
    for image, label in slices:
        granule, background = image[label == 3].astype(float), image[label == 0].astype(float)
        darker.append(np.percentile(background, 10) - np.percentile(granule, 10))
        lighter.append(np.percentile(granule, 90) - np.median(background))
    assert np.mean(darker) > 30  # cores darker than almost all cytoplasm
    assert np.mean(lighter) > 15  # halos lighter than typical cytoplasm


def test_mitochondria_are_darker_and_striped(slices):
    darker, variance_ratio = [], []
    for image, label in slices:
        f = image.astype(float)
        local_mean = ndimage.uniform_filter(f, 5)
        local_var = ndimage.uniform_filter(f * f, 5) - local_mean**2
        inner = ndimage.binary_erosion(label == 2, iterations=2)
        darker.append(f[label == 0].mean() - f[label == 2].mean())
        variance_ratio.append(np.median(local_var[inner]) / np.median(local_var[label == 0]))
    assert np.mean(darker) > 20
    assert np.mean(variance_ratio) > 1.2  # cristae add contrast beyond the noise


def test_nucleus_differs_by_texture_not_mean(slices):
    mean_gap, coarse_ratio = [], []
    for image, label in slices:
        if not (label == 1).any():
            continue
        f = image.astype(float)
        coarse = ndimage.uniform_filter(f, 9)
        mean_gap.append(abs(f[label == 1].mean() - f[label == 0].mean()))
        coarse_ratio.append(coarse[label == 1].std() / coarse[label == 0].std())
    assert np.mean(mean_gap) < 12  # no threshold separates nucleus from cytoplasm
    assert np.mean(coarse_ratio) > 1.1  # chromatin is blotchier than cytoplasm


def test_writer_creates_a_decathlon_datalist(tmp_path):
    from monai.data import load_decathlon_datalist

    out = tmp_path / "synthetic"
    datalist_path = write_synthetic_dataset(out, **SMALL)
    assert datalist_path == out / "datalist.json"
    datalist = json.loads(datalist_path.read_text())
    assert datalist["labels"] == {"0": "background", "1": "nucleus", "2": "mitochondria", "3": "granules"}
    assert datalist["numTraining"] == 3
    assert "not evidence of quality on real EM" in datalist["description"]
    assert datalist["training"][0] == {"image": "images/train_000.tif", "label": "labels/train_000.tif"}

    images = []
    for key, count in (("training", 3), ("validation", 2), ("test", 1)):
        items = load_decathlon_datalist(str(datalist_path), data_list_key=key)
        assert len(items) == count
        for item in items:
            for k in ("image", "label"):
                assert Path(item[k]).is_absolute() and Path(item[k]).is_file()
            images.append(tifffile.imread(item["image"]))
            assert tifffile.imread(item["label"]).dtype == np.uint8
    # the files hold the seeded slices, and no two slices (hence no two splits) share one
    expected, _ = synthesize_slice(64, seed=slice_seed(5, 3))
    np.testing.assert_array_equal(images[3], expected)
    assert len({im.tobytes() for im in images}) == len(images)
    assert not list(out.rglob(".*"))  # no temporary files left


def test_writer_is_idempotent_and_regenerates_on_new_parameters(tmp_path):
    out = tmp_path / "synthetic"
    write_synthetic_dataset(out, **SMALL)
    before = _files(out)
    write_synthetic_dataset(out, **SMALL)
    assert _files(out) == before

    write_synthetic_dataset(out, **{**SMALL, "num_train": 1, "seed": 6})
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["generator"]["seed"] == 6 and len(datalist["training"]) == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "test_000.tif",
        "train_000.tif",
        "val_000.tif",
        "val_001.tif",
    ]


def test_interrupted_write_leaves_no_datalist(tmp_path, monkeypatch):
    out = tmp_path / "synthetic"
    write_synthetic_dataset(out, **SMALL)
    real_imwrite, calls = tifffile.imwrite, []

    def failing_imwrite(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise RuntimeError("interrupted")
        real_imwrite(path, data)

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_synthetic_dataset(out, **{**SMALL, "seed": 9})
    assert not (out / "datalist.json").exists()  # the old datalist went first, the new one was never written
    assert not list(out.rglob(".*"))
    monkeypatch.undo()
    datalist_path = write_synthetic_dataset(out, **{**SMALL, "seed": 9})
    assert json.loads(datalist_path.read_text())["generator"]["seed"] == 9


def test_writer_is_fast_enough(tmp_path):
    import time

    start = time.perf_counter()
    write_synthetic_dataset(tmp_path, num_train=4, num_val=1, num_test=1, size=256)
    assert time.perf_counter() - start < 5  # the default 34 slices take about 2 s


def test_cli_writes_dataset_and_prints_datalist(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--num-train", "2", "--num-val", "1", "--num-test", "0", "--size", "48"]) == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == out / "datalist.json"
    datalist = json.loads(Path(printed).read_text())
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 1 and datalist["test"] == []
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--size", "8"])


def test_cli_runs_as_module(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scsam_monai.cli.synthetic",
            "--out",
            str(tmp_path),
            "--num-train",
            "1",
            "--num-val",
            "0",
            "--num-test",
            "0",
            "--size",
            "32",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert Path(result.stdout.strip()) == tmp_path / "datalist.json"
