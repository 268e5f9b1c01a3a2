"""Volume inference from files: every input format in, label maps in the same format out (with the spacing),
probability maps, overlays, and bounded memory on a volume generated slice by slice."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from scsam_monai.data.io import Volume, open_volume
from scsam_monai.engines import volume_writer
from scsam_monai.engines.volume_writer import list_inputs, segment_inputs, segment_volume

SPACING = (0.5, 0.01, 0.02)


class ThresholdModel(nn.Module):
    """Logits of 3 classes from intensity bands: class k where the image is in band k (k = 1..3)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        centres = torch.tensor([0.375, 0.625, 0.875]).view(1, 3, 1, 1)
        return self.scale * (0.125 - (images - centres).abs())


def _volume(depth: int = 5, h: int = 16, w: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(depth, h, w)).astype(np.uint8)


def _expected(array: np.ndarray) -> np.ndarray:
    from scsam_monai.data.transforms import merge_class_logits
    from scsam_monai.engines.volume_inference import normalize_slice

    x = torch.stack([normalize_slice(s) for s in array])
    return merge_class_logits(ThresholdModel()(x), 0.5)[:, 0].numpy().astype(np.uint8)


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
        writer = volume_writer.open_writer(path, fmt, array.shape, array.dtype, source)
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
    record = segment_volume(ThresholdModel(), tmp_path / name, tmp_path / "out", batch_size=2, progress=False)
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
        ThresholdModel(),
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


def test_png_image_gives_png_label_and_folder_lists_each_input(tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(_volume(1)[0]).save(tmp_path / "in" / "a.png")
    _write_input("tiff", tmp_path / "in" / "b.tif", _volume(2))
    _write_input("zarr", tmp_path / "in" / "c.zarr", _volume(2))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert [p.rsplit("/", 1)[-1] for p in list_inputs(tmp_path / "in")] == ["a.png", "b.tif", "c.zarr"]
    records = segment_inputs(ThresholdModel(), tmp_path / "in", tmp_path / "out", progress=False)
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
    monkeypatch.setattr(volume_writer, "open_volume", lambda path, key=None: volume)
    real_open_writer = volume_writer.open_writer

    def counting_writer(*args, **kwargs):
        writer = real_open_writer(*args, **kwargs)
        write = writer.write

        def counted(index, plane):
            state["written"] += 1
            write(index, plane)

        writer.write = counted
        return writer

    monkeypatch.setattr(volume_writer, "open_writer", counting_writer)
    record = segment_volume(
        ThresholdModel(), "generated.zarr", tmp_path, batch_size=4, overlay_slices=None, progress=False
    )
    assert state["written"] == depth
    assert state["ahead"] <= 4 * (1 + 2) + 1  # batch_size * (prefetch + 2), as segment_slices promises
    with open_volume(record["label"]) as out:
        assert out.shape == (depth, h, w)
