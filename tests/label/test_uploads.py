"""Upload checks of the MONAI Label app: unusable images and label maps are refused with 415 or 422."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scsam_monai.label.uploads import UploadRejected, accepted_suffix, check_image, check_label

from .conftest import bad_files


def test_accepted_suffix_prefers_the_double_suffix():
    assert accepted_suffix("cell.nii.gz") == ".nii.gz"
    assert accepted_suffix("CELL.TIF") == ".tif"
    assert accepted_suffix("cell.gz") is None


def test_good_2d_image_and_3d_stack_pass(tmp_path):
    tifffile.imwrite(tmp_path / "slice.tif", np.zeros((40, 50), np.uint16))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 40, 50), np.uint8), photometric="minisblack")
    assert check_image(tmp_path / "slice.tif") == (1, 40, 50)
    assert check_image(tmp_path / "stack.tif") == (3, 40, 50)


def test_every_bad_image_is_refused_with_its_status_and_named(tmp_path):
    for stem, (path, status) in bad_files(tmp_path).items():
        with pytest.raises(UploadRejected) as caught:
            check_image(path, name=f"client/{path.name}")
        assert caught.value.status_code == status, (stem, caught.value.message)
        assert f"client/{path.name}" in caught.value.message


def test_label_map_values_and_shape_are_checked(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", np.array([[0, 1], [2, 3]], np.uint8))
    tifffile.imwrite(tmp_path / "high.tif", np.array([[0, 1], [2, 7]], np.uint8))
    tifffile.imwrite(tmp_path / "negative.tif", np.array([[0, -1], [2, 3]], np.int16))
    tifffile.imwrite(tmp_path / "fraction.tif", np.array([[0, 0.5], [2, 3]], np.float32))
    assert check_label(tmp_path / "ok.tif", num_classes=3, image_shape=(1, 2, 2)) == (1, 2, 2)
    for name in ("high", "negative", "fraction"):
        with pytest.raises(UploadRejected, match="0..3") as caught:
            check_label(tmp_path / f"{name}.tif", num_classes=3)
        assert caught.value.status_code == 422
    with pytest.raises(UploadRejected, match="shape") as caught:
        check_label(tmp_path / "ok.tif", num_classes=3, image_shape=(1, 4, 4))
    assert caught.value.status_code == 422


def test_stacks_are_checked_slice_by_slice_and_the_slice_is_named(tmp_path):
    image = np.zeros((4, 20, 30), np.float32)
    image[2, 5, 7] = np.nan
    tifffile.imwrite(tmp_path / "stack.tif", image, photometric="minisblack")
    with pytest.raises(UploadRejected) as caught:
        check_image(tmp_path / "stack.tif", name="stack.tif")
    assert caught.value.status_code == 422 and "slice 2" in caught.value.message
    label = np.zeros((4, 20, 30), np.uint8)
    label[3, 0, 0] = 9  # only the last slice holds a value outside the classes
    tifffile.imwrite(tmp_path / "label.tif", label, photometric="minisblack")
    with pytest.raises(UploadRejected, match=r"values \[9\] outside 0..3"):
        check_label(tmp_path / "label.tif", num_classes=3, image_shape=(4, 20, 30))
    label[3, 0, 0] = 3
    tifffile.imwrite(tmp_path / "label.tif", label, photometric="minisblack")
    assert check_label(tmp_path / "label.tif", num_classes=3, image_shape=(4, 20, 30)) == (4, 20, 30)
