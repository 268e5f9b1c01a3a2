"""How the train task turns the datastore's labelled images into the bundle's datalist."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("monailabel")

from scsam_monai.label.train import split_datalist, training_slices  # noqa: E402


def test_2d_pairs_are_used_in_place_and_stacks_give_their_annotated_slices(tmp_path):
    tifffile.imwrite(tmp_path / "slice.tif", np.arange(48 * 40, dtype=np.uint16).reshape(48, 40))
    tifffile.imwrite(tmp_path / "slice_label.tif", np.ones((48, 40), np.uint8))
    stack = np.random.default_rng(0).integers(0, 255, (4, 48, 40), dtype=np.uint8)
    labels = np.zeros((4, 48, 40), np.uint8)
    labels[1, 5:9, 5:9] = 2
    labels[3, 0, 0] = 3
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "stack_label.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "bad_label.tif", np.full((48, 40), 9, np.uint8))
    pairs = [
        {"image": str(tmp_path / "slice.tif"), "label": str(tmp_path / "slice_label.tif")},
        {"image": str(tmp_path / "stack.tif"), "label": str(tmp_path / "stack_label.tif")},
        {"image": str(tmp_path / "slice.tif"), "label": str(tmp_path / "bad_label.tif")},  # skipped: value 9
    ]
    records = training_slices(pairs, tmp_path / "slices", num_classes=3)
    assert records[0] == pairs[0]
    assert [r["image"].rsplit("/", 1)[1] for r in records[1:]] == ["stack_z0001_image.tif", "stack_z0003_image.tif"]
    np.testing.assert_array_equal(tifffile.imread(records[1]["image"]), stack[1])
    np.testing.assert_array_equal(tifffile.imread(records[2]["label"]), labels[3])
    assert len(records) == 3


def test_split_keeps_one_validation_slice_at_least_and_reuses_a_single_one():
    records = [{"image": f"{i}.tif", "label": f"{i}_l.tif"} for i in range(10)]
    split = split_datalist(records, val_split=0.2)
    assert len(split["training"]) == 8 and len(split["validation"]) == 2
    assert not {r["image"] for r in split["training"]} & {r["image"] for r in split["validation"]}
    assert split == split_datalist(list(reversed(records)), val_split=0.2)  # seeded, order-independent
    assert len(split_datalist(records[:2], val_split=0.01)["validation"]) == 1
    one = split_datalist(records[:1], val_split=0.2)
    assert one["training"] == one["validation"] == records[:1]
