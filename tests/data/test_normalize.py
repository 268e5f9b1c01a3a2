"""Tests of intensity normalisation (``scsam_monai.data.normalize``): per-volume windows measured streaming, the
per-image normalisation of training and inference, and the float path that matches ``scsam-prepare``'s slices."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import ScaleIntensityRangePercentilesd

from scsam_monai.data.normalize import (
    IMAGE_NORMALIZATIONS,
    PREPARED_SLICE_WINDOW,
    IntensityWindow,
    PercentileAccumulator,
    SliceNormalizer,
    measure_volume_window,
    normalize_slice,
    volume_window,
)
from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.io.readers import DataPreparationError, Volume, open_volume, read_image_2d
from scsam_monai.preparation import CellSource, SplitSpec, prepare_dataset

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
    assert normalize_slice(dark, window, "uint8").max() < normalize_slice(bright, window, "uint8").max() == 255


def test_window_clips_and_scales_to_uint8_uint16_and_float32():
    volume = RNG.integers(0, 4096, (3, 50, 50)).astype(np.uint16)
    volume[0, 0, 0], volume[0, 0, 1] = 0, 4095  # outliers beyond the percentiles
    window = volume_window(iter(volume), source="v.tif")
    as_uint8 = normalize_slice(volume[0], window, "uint8")
    as_uint16 = normalize_slice(volume[0], window, "uint16")
    as_float = normalize_slice(volume[0], window)
    assert as_uint8.dtype == np.uint8 and as_uint8.min() == 0 and as_uint8.max() == 255
    assert as_uint16.dtype == np.uint16 and as_uint16.min() == 0 and as_uint16.max() == 65535
    assert as_float.dtype == np.float32 and 0.0 <= as_float.min() and as_float.max() <= 1.0
    np.testing.assert_array_equal(as_uint8, np.round(as_float.astype(np.float64) * 255))
    np.testing.assert_allclose(as_uint16 / 65535, as_float, atol=0.5 / 65535 + 1e-7)
    with pytest.raises(ValueError, match="dtype must be one of"):
        normalize_slice(volume[0], window, "int8")


def test_float_data_ignore_nan_and_are_sampled_beyond_the_budget():
    volume = RNG.normal(0, 1, (4, 100, 100))
    volume[0, :5] = np.nan
    accumulator = PercentileAccumulator(volume.dtype, "v.h5", num_slices=4, max_samples=8000)
    for image in volume:
        accumulator.update(image)
    window = accumulator.window(1, 99)
    assert not window.exact
    assert window.low == pytest.approx(np.nanpercentile(volume, 1), abs=0.15)
    assert np.isfinite(normalize_slice(volume[0], window)).all()


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


# ---- per image: the bundle's per_image normalisation -------------------------------------------------------


def _monai_per_image(image: np.ndarray) -> np.ndarray:
    """train.yaml's ``per_image`` transform, after its ``EnsureTyped(float32)``."""
    bundle = ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns "Divide by zero" for a constant slice
        out = bundle({"image": torch.as_tensor(image[None].astype(np.float32))})["image"]
    return np.asarray(torch.as_tensor(out).float())[0]


@pytest.mark.parametrize(
    "image",
    [
        RNG.gamma(2.0, 300.0, (30, 20)).astype(np.uint16),  # MONAI uses torch.quantile here
        RNG.integers(0, 256, (64, 48)).astype(np.uint8),
        RNG.normal(0.3, 2.0, (33, 17)).astype(np.float32),
        RNG.gamma(2.0, 300.0, (1100, 1000)).astype(np.float32),  # and numpy above 10^6 voxels
        np.full((12, 10), 7, np.uint16),  # constant: MONAI shifts it to 0
        np.where(np.arange(10_000).reshape(100, 100) == 0, 100, 50).astype(np.uint8),  # percentiles coincide
    ],
    ids=["uint16-small", "uint8", "float32", "float32-large", "constant", "percentiles-coincide"],
)
def test_per_image_normalisation_equals_monai_scale_intensity_range_percentiles(image):
    out = normalize_slice(image)
    low, high = np.percentile(image, (0.5, 99.5))
    if low == high:  # MONAI's rule for a (nearly) constant slice: shifted, neither scaled nor clipped
        np.testing.assert_array_equal(out, image.astype(np.float32) - low)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, _monai_per_image(image), rtol=0, atol=1e-6)  # a few float32 ulps


def test_per_image_normalisation_reaches_both_ends_and_keeps_any_shape():
    image = RNG.gamma(2.0, 300.0, (1, 30, 20)).astype(np.uint16)
    out = normalize_slice(image)
    assert out.shape == (1, 30, 20) and out.min() == 0 and out.max() == 1
    np.testing.assert_array_equal(normalize_slice(image, dtype="uint8"), np.round(out.astype(np.float64) * 255))


# ---- per volume: the raw volume normalised as scsam-prepare normalised it ----------------------------------


def _synthetic_uint16_volume() -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit EM-like volume (noisy background, a brighter organelle, a few saturated and dead voxels)."""
    rng = np.random.default_rng(7)
    depth, h, w = 6, 40, 48
    label = np.zeros((depth, h, w), np.uint8)
    label[:, 10:25, 12:30] = 1
    image = rng.gamma(4.0, 2500.0, (depth, h, w)) + 9000.0 * label
    image[:, 0, :3] = 65535  # saturated
    image[:, -1, -3:] = 0  # dead
    return image.clip(0, 65535).astype(np.uint16), label


def test_raw_volume_window_and_float_path_match_the_slices_scsam_prepare_wrote(tmp_path):
    image, label = _synthetic_uint16_volume()
    tifffile.imwrite(tmp_path / "raw.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", label, photometric="minisblack")
    cell = CellSource("c1", tmp_path / "raw.tif", labels=tmp_path / "labels.tif")
    split = SplitSpec(train_slices=[(0, 4)], val_slices=[(4, 6)])
    prepare_dataset([cell], tmp_path / "out", classes=["organelle"], middle_slices=4, split=split, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    prepared = {item["slice"]: item["image"] for item in manifest["slices"]}
    assert sorted(prepared) == [1, 2, 3, 4]  # the 4 middle slices

    with open_volume(tmp_path / "raw.tif") as volume:
        window = measure_volume_window(volume, indices=sorted(prepared))
        raw = {i: volume.read_slice(i) for i in prepared}
    assert window.as_dict() == manifest["cells"][0]["intensity_window"]
    assert IntensityWindow(**manifest["cells"][0]["intensity_window"]) == window  # the window travels as JSON
    for i, name in prepared.items():
        written = read_image_2d(tmp_path / "out" / name)
        assert written.dtype == np.uint8
        np.testing.assert_array_equal(normalize_slice(raw[i], window, "uint8"), written)
        as_float = normalize_slice(raw[i], window)
        assert as_float.dtype == np.float32
        assert np.abs(as_float - written / 255.0).max() <= 0.5 / 255 + 1e-6  # uint8 rounding is the only difference


def test_measure_volume_window_reads_one_slice_at_a_time_along_any_axis():
    image, _ = _synthetic_uint16_volume()
    reads = []

    def read(index):
        reads.append(index)
        return image[index]

    volume = Volume(source="generated", format="zarr", shape=image.shape, dtype=image.dtype, read=read)
    window = measure_volume_window(volume, axis=1)
    assert len(reads) == image.shape[1] and all(isinstance(index[1], int) for index in reads)
    assert window == volume_window(iter(image), source="generated")  # the same voxels, in another order
    with pytest.raises(DataPreparationError, match="generated: slice 99 is outside"):
        measure_volume_window(volume, indices=[0, 99])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", ">u2", "int8", "float32", "bool"])
def test_slice_normalizer_equals_normalize_slice_exactly(dtype):
    """The lookup table of 8- and 16-bit slices holds normalize_slice's own values: identical results."""
    rng = np.random.default_rng(4)
    if dtype == "bool":
        volume = rng.random((3, 20, 16)) > 0.5
    elif dtype == "float32":
        volume = rng.normal(0, 1, (3, 20, 16)).astype(np.float32)
    else:
        info = np.iinfo(np.dtype(dtype))
        volume = rng.integers(info.min, info.max, (3, 20, 16), endpoint=True).astype(dtype)
    window = volume_window(iter(volume), source="v.tif", lower=2, upper=97)
    normalizer = SliceNormalizer(window)
    out = np.empty((20, 16), np.float32)
    for image in volume:
        np.testing.assert_array_equal(normalizer(image), normalize_slice(image, window))
        assert normalizer(image, out=out) is out
        np.testing.assert_array_equal(out, normalize_slice(image, window))
    np.testing.assert_array_equal(SliceNormalizer(None)(volume[0]), normalize_slice(volume[0]))  # per image


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float64"])
@pytest.mark.parametrize("per_image", [True, False])
def test_band_by_band_normalisation_gives_the_whole_slice_values(dtype, per_image):
    """``for_bands``: a slice normalised a band of rows at a time, as tiling reads it, equals the slice normalised
    whole, per image (the slice's own percentiles) or with a volume window; the slice itself is left unchanged."""
    rng = np.random.default_rng(5)
    image = (rng.gamma(2.0, 900.0, (61, 37)) if dtype != "uint8" else rng.integers(0, 256, (61, 37))).astype(dtype)
    kept = image.copy()
    window = None if per_image else volume_window(iter([image]), source="v.tif")
    normalizer = SliceNormalizer(window)
    banded = normalizer.for_bands(image)
    rows = np.concatenate([banded(image[r : r + 8]) for r in range(0, 61, 8)])
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, normalizer(image))
    np.testing.assert_array_equal(image, kept)
    constant = np.full((9, 7), 40, dtype)  # MONAI's rule for coinciding percentiles holds band by band too
    per_band = SliceNormalizer(None).for_bands(constant)
    np.testing.assert_array_equal(per_band(constant[:4]), normalize_slice(constant)[:4])


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_measuring_in_several_threads_gives_the_same_window(dtype):
    volume = (RNG.normal(0, 1000, (9, 30, 20)) + (2000 if dtype == "uint16" else 0)).astype(dtype)
    source = Volume(source="v.tif", format="tiff", shape=volume.shape, dtype=volume.dtype, read=lambda i: volume[i])
    one = measure_volume_window(source)
    assert measure_volume_window(source, workers=4) == one == volume_window(iter(volume), source="v.tif")


def test_prepared_slice_window_is_train_yaml_prepared_transform_and_bad_names_are_refused():
    from monai.transforms import ScaleIntensityRange

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    monai = ScaleIntensityRange(0.0, 255.0, 0.0, 1.0, clip=True)(torch.from_numpy(values.astype(np.float32))[None])
    np.testing.assert_array_equal(normalize_slice(values, PREPARED_SLICE_WINDOW), monai[0].numpy())
    assert [str(ImagePreprocessing.of(v)) for v in IMAGE_NORMALIZATIONS] == ["per_image", "prepared"]
    with pytest.raises(ValueError, match="image_normalization must be one of per_image, prepared.*'per_volume'"):
        ImagePreprocessing.of("per_volume")
