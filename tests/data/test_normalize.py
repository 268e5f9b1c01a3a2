"""Tests of the per-volume percentile normalisation (``scsam_monai.data.normalize``)."""

from __future__ import annotations

import numpy as np
import pytest

from scsam_monai.data.io import DataPreparationError
from scsam_monai.data.normalize import PercentileAccumulator, normalize_slice, volume_window

RNG = np.random.default_rng(1)


@pytest.mark.parametrize(
    "volume",
    [
        RNG.integers(0, 256, (4, 30, 40)).astype(np.uint8),
        RNG.integers(100, 60000, (4, 30, 40)).astype(np.uint16),
        RNG.integers(-3000, 3000, (4, 30, 40)).astype(np.int16),
        RNG.normal(5.0, 2.0, (4, 30, 40)).astype(np.float32),
    ],
    ids=["uint8", "uint16", "int16", "float32"],
)
def test_window_equals_numpy_percentiles_over_the_whole_volume(volume):
    window = volume_window(iter(volume), source="v.tif", lower=0.5, upper=99.5)
    assert window.low == pytest.approx(np.percentile(volume, 0.5))
    assert window.high == pytest.approx(np.percentile(volume, 99.5))
    assert window.exact and window.method == "percentiles"
    assert window.minimum == volume.min() and window.maximum == volume.max()


def test_one_window_for_all_slices_keeps_relative_contrast():
    dark = np.full((8, 8), 20, np.uint8)
    bright = np.full((8, 8), 200, np.uint8)
    bright[0, 0] = 0
    window = volume_window([dark, bright], source="v.tif", lower=0, upper=100)
    assert normalize_slice(dark, window).max() < normalize_slice(bright, window).max() == 255


def test_normalize_clips_and_scales_to_uint8_and_float32():
    volume = RNG.integers(0, 4096, (3, 50, 50)).astype(np.uint16)
    volume[0, 0, 0], volume[0, 0, 1] = 0, 4095  # outliers beyond the percentiles
    window = volume_window(iter(volume), source="v.tif")
    as_uint8 = normalize_slice(volume[0], window, "uint8")
    as_float = normalize_slice(volume[0], window, "float32")
    assert as_uint8.dtype == np.uint8 and as_uint8.min() == 0 and as_uint8.max() == 255
    assert as_float.dtype == np.float32 and 0.0 <= as_float.min() and as_float.max() <= 1.0
    np.testing.assert_allclose(as_float * 255, as_uint8, atol=0.51)


def test_float_data_ignore_nan_and_are_sampled_beyond_the_budget():
    volume = RNG.normal(0, 1, (4, 100, 100))
    volume[0, :5] = np.nan
    accumulator = PercentileAccumulator(volume.dtype, "v.h5", num_slices=4, max_samples=8000)
    for image in volume:
        accumulator.update(image)
    window = accumulator.window(1, 99)
    assert not window.exact
    assert window.low == pytest.approx(np.nanpercentile(volume, 1), abs=0.15)
    assert np.isfinite(normalize_slice(volume[0], window, "float32")).all()


def test_constant_and_empty_volumes_are_errors_naming_the_file():
    with pytest.raises(DataPreparationError, match=r"flat\.tif: the volume is constant \(every voxel is 7\)"):
        volume_window([np.full((5, 5), 7, np.uint16)] * 3, source="flat.tif")
    with pytest.raises(DataPreparationError, match=r"none\.tif: the volume is empty"):
        volume_window([], source="none.tif")
    with pytest.raises(DataPreparationError, match=r"nan\.h5: the volume has no finite value"):
        volume_window([np.full((4, 4), np.nan)], source="nan.h5")


def test_almost_constant_volume_falls_back_to_min_max():
    image = np.zeros((100, 100), np.uint8)
    image[0, 0] = 50  # the percentiles coincide, but the volume is not constant
    window = volume_window([image], source="v.tif")
    assert (window.low, window.high, window.method) == (0.0, 50.0, "min-max")
