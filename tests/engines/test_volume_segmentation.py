"""Volume inference from files: every input format in, label maps in the same format out (with the spacing),
probability maps, overlays, and bounded memory on a volume generated slice by slice."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import torch

from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.engines import inference_job
from scsam_monai.engines.inference_job import list_inputs, segment_inputs, segment_volume
from scsam_monai.io.readers import Volume, open_volume
from scsam_monai.io.writers import open_writer
from scsam_monai.palette import class_colour, colourise
from tests.helpers import StandInModel

SPACING = (0.5, 0.01, 0.02)
# the stand-in model: StandInModel("bands"), class k (1..3) where the normalised image is in [k / 4, (k + 1) / 4]


def _volume(depth: int = 5, h: int = 16, w: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(depth, h, w)).astype(np.uint8)


def _expected(array: np.ndarray) -> np.ndarray:
    from scsam_monai.data.normalize import normalize_slice

    x = torch.from_numpy(np.stack([normalize_slice(s) for s in array]))[:, None]
    return StandInModel("bands")(x).argmax(1).numpy().astype(np.uint8)  # channel 0 is the background


def _write_input(fmt: str, path, array: np.ndarray):
    if fmt == "tiff":
        tifffile.imwrite(
            path,
            array,
            imagej=True,
            resolution=(1 / SPACING[2], 1 / SPACING[1]),
            metadata={"axes": "ZYX", "spacing": SPACING[0], "unit": "micron"},
        )
    elif fmt == "hdf5":
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=array).attrs["element_size_um"] = SPACING
    elif fmt in ("zarr", "n5", "nifti"):
        source = Volume(
            source="x", format="tiff", shape=array.shape, dtype=array.dtype, read=None, spacing=SPACING, unit="µm"
        )
        writer = open_writer(path, fmt, array.shape, array.dtype, source)
        for i, plane in enumerate(array):
            writer.write(i, plane)
        writer.close()


@pytest.mark.parametrize(
    ("fmt", "name", "out_name"),
    [
        ("tiff", "vol.tif", "vol_seg.tif"),
        ("hdf5", "vol.h5", "vol_seg.h5"),
        ("zarr", "vol.zarr", "vol_seg.zarr"),
        ("n5", "vol.n5", "vol_seg.n5"),
        ("nifti", "vol.nii.gz", "vol_seg.nii.gz"),
    ],
)
def test_label_map_is_written_in_the_input_format_with_its_spacing(tmp_path, fmt, name, out_name):
    array = _volume()
    _write_input(fmt, tmp_path / name, array)
    record = segment_volume(StandInModel("bands"), tmp_path / name, tmp_path / "out", batch_size=2, progress=False)
    assert record["label"].endswith(out_name)
    with open_volume(record["label"]) as out:
        assert out.shape == array.shape
        np.testing.assert_array_equal(out.read(), _expected(array))
        np.testing.assert_allclose(out.spacing, SPACING, rtol=1e-5)
    assert record["overlays"] and (tmp_path / "out" / f"vol_overlay_z{array.shape[0] // 2:05d}.png").is_file()


def test_nifti_on_request_and_probability_maps(tmp_path):
    array = _volume(depth=3)
    _write_input("tiff", tmp_path / "vol.tif", array)
    record = segment_volume(
        StandInModel("bands"),
        tmp_path / "vol.tif",
        tmp_path / "out",
        output_format="nifti",
        probabilities=True,
        class_names=["background", "a", "b", "c"],
        overlay_slices=[0, 2],
        progress=False,
    )
    assert record["format"] == "nifti" and record["label"].endswith("vol_seg.nii.gz")
    with open_volume(record["label"]) as out:
        np.testing.assert_array_equal(out.read(), _expected(array))
    assert [p.rsplit("/", 1)[-1] for p in record["probabilities"]] == [f"vol_prob_{c}.nii.gz" for c in "abc"]
    with open_volume(record["probabilities"][1]) as prob:
        values = prob.read()
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert len(record["overlays"]) == 2


def test_2d_tiff_image_gives_a_2d_uint8_label_map_named_after_it(tmp_path):
    image = _volume(1)[0]
    tifffile.imwrite(tmp_path / "slice_07.tif", image)
    (record,) = segment_inputs(StandInModel("bands"), tmp_path / "slice_07.tif", tmp_path / "out", progress=False)
    assert record["format"] == "tiff" and record["label"] == str(tmp_path / "out" / "slice_07_seg.tif")
    label = tifffile.imread(record["label"])
    assert label.shape == image.shape and label.dtype == np.uint8
    np.testing.assert_array_equal(label, _expected(image[None])[0])


def test_inference_overlay_colours_classes_with_the_evaluation_palette(tmp_path):
    from PIL import Image

    image = np.linspace(0, 255, 16 * 12).reshape(16, 12).astype(np.uint8)
    label = np.zeros((16, 12), np.uint8)
    label[2:6, 2:6], label[8:12, 2:6], label[8:12, 7:11] = 1, 2, 3
    path = inference_job.write_overlay(tmp_path / "overlay.png", image, label, alpha=0.45)
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    assert rgb.shape == (16, 24, 3)
    np.testing.assert_allclose(rgb[:, 12:], np.round(colourise(image, label, alpha=0.45) * 255), atol=1)
    grey = rgb[:, :12, 0] / 255
    for k, (y, x) in zip((1, 2, 3), ((3, 3), (9, 3), (9, 8)), strict=True):
        expected = (0.55 * grey[y, x] + 0.45 * class_colour(k)) * 255
        np.testing.assert_allclose(rgb[y, 12 + x], expected, atol=1.5)
    np.testing.assert_array_equal(rgb[0, 12:], rgb[0, :12])  # background stays grey


def test_png_image_gives_png_label_and_folder_lists_each_input(tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(_volume(1)[0]).save(tmp_path / "in" / "a.png")
    _write_input("tiff", tmp_path / "in" / "b.tif", _volume(2))
    _write_input("zarr", tmp_path / "in" / "c.zarr", _volume(2))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert [p.rsplit("/", 1)[-1] for p in list_inputs(tmp_path / "in")] == ["a.png", "b.tif", "c.zarr"]
    records = segment_inputs(StandInModel("bands"), tmp_path / "in", tmp_path / "out", progress=False)
    assert [r["format"] for r in records] == ["png", "tiff", "zarr"]
    label = np.asarray(Image.open(tmp_path / "out" / "a_seg.png"))
    np.testing.assert_array_equal(label, _expected(_volume(1))[0])
    assert (tmp_path / "out" / "inference_overlay.png").is_file()
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 3


def test_volume_is_streamed_in_bounded_memory(tmp_path, monkeypatch):
    """A 300-slice volume generated on demand: slices read ahead of the last written stay bounded."""
    depth, h, w = 300, 32, 32
    state = {"read": 0, "written": 0, "ahead": 0}

    def read(index):
        z = index[0]
        state["read"] += 1
        state["ahead"] = max(state["ahead"], state["read"] - state["written"])
        return np.full((h, w), z % 256, np.uint8) + np.arange(w, dtype=np.uint8)

    volume = Volume(
        source="generated", format="zarr", shape=(depth, h, w), dtype=np.uint8, read=read, spacing=SPACING, unit="µm"
    )
    monkeypatch.setattr(inference_job, "open_volume", lambda path, key=None: volume)
    real_open_writer = inference_job.open_writer

    def counting_writer(*args, **kwargs):
        writer = real_open_writer(*args, **kwargs)
        write = writer.write

        def counted(index, plane):
            state["written"] += 1
            write(index, plane)

        writer.write = counted
        return writer

    monkeypatch.setattr(inference_job, "open_writer", counting_writer)
    record = segment_volume(
        StandInModel("bands"),
        "generated.zarr",
        tmp_path,
        batch_size=4,
        overlay_slices=None,
        progress=False,
        output_format="tiff",  # a single-file writer: the OME-Zarr store is resumable, not all-or-nothing
    )
    assert state["written"] == depth
    assert state["ahead"] <= 4 * (2 + 2 + 3)  # batch_size * (prefetch + writeback + 3), as segment_slices promises
    with open_volume(record["label"]) as out:
        assert out.shape == (depth, h, w)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("tiff", "vol.tif"),
        ("hdf5", "vol.h5"),
        ("n5", "vol.n5"),
        ("nifti", "vol.nii.gz"),
        ("png", "vol.png"),
    ],  # zarr is a resumable store that keeps its completed slices: tests/engines/test_whole_dataset.py
)
@pytest.mark.parametrize("failure", ["read", "model"])
def test_a_failed_run_leaves_no_partial_output_and_keeps_the_old_one(tmp_path, monkeypatch, fmt, name, failure):
    array = _volume(depth=6)

    def read(index):
        if failure == "read" and index[0] == 4:
            raise OSError("page 4 is truncated")
        return array[index]

    volume = Volume(source=str(tmp_path / name), format=fmt, shape=array.shape, dtype=array.dtype, read=read)
    monkeypatch.setattr(inference_job, "open_volume", lambda path, key=None: volume)
    out = tmp_path / "out"
    out.mkdir()
    if fmt == "tiff":  # an older result stays until a complete new one replaces it
        tifffile.imwrite(out / "vol_seg.tif", np.full(array.shape, 7, np.uint8))
    before = sorted(p.name for p in out.iterdir())
    # the model fails on its second call, after the first batch's label maps went to the writers
    model = StandInModel("bands", fail_on_call=2 if failure == "model" else None)
    expected = "slice 4 \\(of 6\\) cannot be read.*truncated" if failure == "read" else "device lost"
    with pytest.raises(Exception, match=expected):
        segment_volume(
            model,
            name,
            out,
            batch_size=2,
            output_format=fmt,
            probabilities=True,
            class_names=list("0abc"),
            overlay_slices=[0],
            progress=False,
        )
    assert sorted(p.name for p in out.iterdir()) == before  # no partial file, probability map or overlay
    if fmt == "tiff":
        assert (tifffile.imread(out / "vol_seg.tif") == 7).all()


def test_prepared_normalises_a_raw_input_per_volume_and_datalist_slices_as_training_read_them(tmp_path):
    from scsam_monai.data.normalize import PREPARED_SLICE_WINDOW, normalize_slice, volume_window

    raw = (_volume(depth=4).astype(np.uint16) * 40 + 1000) * np.arange(1, 5, dtype=np.uint16)[:, None, None]
    _write_input("tiff", tmp_path / "raw.tif", raw)
    model = ImagePreprocessing("prepared").attach(StandInModel("bands"))  # what its weights would record
    (record,) = segment_inputs(model, tmp_path / "raw.tif", tmp_path / "out")
    window = volume_window(iter(raw), source="raw.tif")
    assert record["image_normalization"] == "prepared" and record["intensity_window"]["low"] == window.low
    x = torch.from_numpy(np.stack([normalize_slice(s, window) for s in raw]))[:, None]
    expected = StandInModel("bands")(x).argmax(1).numpy()
    np.testing.assert_array_equal(tifffile.imread(record["label"]), expected)

    # a datalist split of prepared (uint8) slices: 0..255 -> 0..1, train.yaml's "prepared" transform
    image = _volume(depth=1)[0]
    tifffile.imwrite(tmp_path / "s0.tif", image)
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [{"image": str(tmp_path / "s0.tif")}]}))
    (record,) = segment_inputs(model, None, tmp_path / "out2", datalist=tmp_path / "datalist.json", split="test")
    assert record["intensity_window"] == PREPARED_SLICE_WINDOW.as_dict()
    x = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
    np.testing.assert_array_equal(tifffile.imread(record["label"]), StandInModel("bands")(x).argmax(1)[0])


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_tiff_slices_stream_by_positioned_reads_from_several_threads(tmp_path, byteorder):
    """Streaming reads the z slices of an uncompressed stack with ``os.preadv`` (nothing stays mapped), in any
    order and from several threads at once (the reader thread and the window's measuring threads)."""
    from concurrent.futures import ThreadPoolExecutor

    array = np.random.default_rng(5).integers(0, 65535, (12, 40, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", array, byteorder=byteorder, metadata={"axes": "ZYX"})
    with open_volume(tmp_path / "v.tif") as volume:
        assert volume.lazy
        with ThreadPoolExecutor(4) as pool:
            slices = list(pool.map(volume.read_slice, [11, 0, *range(12)]))
        for z, plane in zip([11, 0, *range(12)], slices, strict=True):
            np.testing.assert_array_equal(plane, array[z])
        np.testing.assert_array_equal(volume.read_slice(7, axis=2), array[:, :, 7])  # other axes: the memory map
