"""``--roi``: parsing the region and reading a lazy view of it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scsam_monai.io.readers import DataPreparationError, open_volume
from scsam_monai.io.roi import crop_volume, parse_roi


def test_parse_roi_reads_three_or_two_axes_with_open_bounds():
    assert parse_roi("1:3,10:20,:40") == (slice(1, 3), slice(10, 20), slice(None, 40))
    assert parse_roi("10:20,5:") == (slice(None), slice(10, 20), slice(5, None))
    assert parse_roi([[0, 2], [None, 8], [1, 9]]) == (slice(0, 2), slice(None, 8), slice(1, 9))
    assert parse_roi(None) is None and parse_roi("") is None


@pytest.mark.parametrize(
    "text, message",
    [("1:3", "z0:z1"), ("1-3,0:2,0:2", "start:stop"), ("3:1,0:2,0:2", "empty"), ("a:2,0:2,0:2", "not an integer")],
)
def test_parse_roi_names_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_roi(text)


def test_crop_volume_reads_the_region_lazily_with_the_spacing(tmp_path):
    data = np.arange(4 * 30 * 50, dtype=np.uint16).reshape(4, 30, 50)
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.004, 1 / 0.004), metadata={"unit": "um", "axes": "ZYX"})
    with open_volume(path) as volume:
        view, start = crop_volume(volume, parse_roi("1:3,5:25,10:"))
        assert start == (1, 5, 10) and view.shape == (2, 20, 40)
        np.testing.assert_array_equal(view.read_slice(1), data[2, 5:25, 10:])
        np.testing.assert_array_equal(view.read(), data[1:3, 5:25, 10:])
        assert view.spacing == volume.spacing and "[1:3,5:25,10:50]" in view.source
        with pytest.raises(DataPreparationError, match="outside its 30 pixels along y"):
            crop_volume(volume, parse_roi(":,20:40,:"))
