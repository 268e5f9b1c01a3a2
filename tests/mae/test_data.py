"""Tests of the unlabelled-slice listing and reading for MAE pre-training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scsam_monai.data.transforms import LoadEMImaged
from scsam_monai.mae.data import unlabelled_slices

LOAD_SLICE = LoadEMImaged(keys="image", slice_key="slice", container_key="key")  # pretrain_mae.yaml's loader


def test_datalist_images_of_training_and_validation_labels_ignored(synthetic_dataset):
    datalist = synthetic_dataset(num_train=3, num_val=2, num_test=1, size=64, seed=1) / "datalist.json"
    items = unlabelled_slices(datalist=datalist)
    assert len(items) == 5 and all(set(item) == {"image", "slice", "key"} for item in items)
    assert all(item["slice"] == 0 and Path(item["image"]).parent.name == "images" for item in items)
    assert not any(Path(item["image"]).name.startswith("test_") for item in items)
    assert len(unlabelled_slices(datalist=datalist, splits=["training", "test", "missing"])) == 4


def test_folder_of_slices_and_volumes(tmp_path):
    volume = np.stack([np.full((20, 30), z, dtype=np.uint8) for z in range(4)])
    tifffile.imwrite(tmp_path / "a_volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "b_slice.tif", np.zeros((24, 16), dtype=np.uint16))  # another size
    (tmp_path / "notes.txt").write_text("not an image")
    items = unlabelled_slices(image_dir=tmp_path)
    assert [(Path(i["image"]).name, i["slice"]) for i in items] == [
        ("a_volume.tif", 0),
        ("a_volume.tif", 1),
        ("a_volume.tif", 2),
        ("a_volume.tif", 3),
        ("b_slice.tif", 0),
    ]
    assert unlabelled_slices(image_dir=tmp_path / "a_volume.tif")[2] == {
        "image": str(tmp_path / "a_volume.tif"),
        "slice": 2,
        "key": "",
    }
    loaded = LOAD_SLICE(items[2])
    assert loaded["image"].shape == (20, 30) and (loaded["image"] == 2).all()
    assert loaded["image_path"] == str(tmp_path / "a_volume.tif")
    assert LOAD_SLICE({"image": tmp_path / "b_slice.tif"})["image"].shape == (24, 16)


def test_a_folder_of_per_slice_files_is_one_volume(tmp_path):
    for z in range(3):
        tifffile.imwrite(tmp_path / f"section_{z}.tiff", np.full((8, 8), 10 * z, dtype=np.uint8))
    items = unlabelled_slices(image_dir=tmp_path, image_glob="*.tif")  # no *.tif: the folder is a stack
    assert [(i["image"], i["slice"]) for i in items] == [(str(tmp_path), z) for z in range(3)]
    assert (LOAD_SLICE(items[2])["image"] == 20).all()


def test_nothing_to_pretrain_on_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        unlabelled_slices(image_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        unlabelled_slices(datalist=tmp_path / "datalist.json")
    (tmp_path / "datalist.json").write_text(json.dumps({"test": []}))
    with pytest.raises(ValueError, match="No image"):
        unlabelled_slices(datalist=tmp_path / "datalist.json")
    with pytest.raises(ValueError, match="datalist"):
        unlabelled_slices()
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((8, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="nan.tif"):
        LOAD_SLICE({"image": nan, "slice": 0})
