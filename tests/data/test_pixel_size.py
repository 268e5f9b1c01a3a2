"""The model's pixel size: read from files, derived in training, saved with the weights, adopted when they load."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile
import torch

from scsam_monai.data.pixel_size import (
    datalist_pixel_size,
    in_plane_pixel_size,
    input_pixel_size,
    record_training_pixel_size,
    to_nanometres,
    training_pixel_size,
)
from scsam_monai.data.preprocessing import PIXEL_SIZE_KEY, ImagePreprocessing
from scsam_monai.io.readers import open_volume
from scsam_monai.preparation import prepare_dataset
from tests.preparation.test_prepare import cell_source, write_cell


def test_units_convert_to_nanometres():
    assert to_nanometres(4, "nm") == 4
    assert to_nanometres(0.004, "µm") == pytest.approx(4)
    assert to_nanometres(0.004, "micron") == pytest.approx(4)
    assert to_nanometres(0.004, "micrometers") == pytest.approx(4)
    assert to_nanometres(40, "Å") == pytest.approx(4)
    assert to_nanometres(4e-6, "mm") == pytest.approx(4)
    assert to_nanometres(4, "pixel") is None
    assert to_nanometres(4, None) is None


def test_in_plane_pixel_size_says_where_it_came_from_or_why_there_is_none(caplog):
    assert in_plane_pixel_size([0.004, 0.004], "µm", "a.tif")[0] == pytest.approx(4)
    assert in_plane_pixel_size([None, 4.0], "nm", "a.tif")[0] is None
    size, how = in_plane_pixel_size([1.0, 1.0], None, "a.tif")
    assert size is None and "spacing 1 without a unit" in how  # the readers' placeholder is no pixel size
    size, how = in_plane_pixel_size([5.0, 5.0], None, "a.n5")
    assert size == 5.0 and "taken as nanometres" in how
    assert in_plane_pixel_size([5.0, 5.0], "pixel", "a.tif")[0] is None
    with caplog.at_level(logging.WARNING):
        size, _ = in_plane_pixel_size([4.0, 9.0], "nm", "a.tif")
    assert size == pytest.approx(6.0) and "not square" in caplog.text


def test_input_pixel_size_from_an_imagej_tiff_or_the_override(tmp_path):
    path = tmp_path / "stack.tif"
    stack = np.zeros((3, 16, 20), np.uint8)
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(1 / 0.008, 1 / 0.008), metadata={"unit": "um", "axes": "ZYX"}
    )
    with open_volume(path) as volume:
        size, how = input_pixel_size(volume)
        assert size == pytest.approx(8.0) and "stack.tif" in how
        assert input_pixel_size(volume, 3.5) == (3.5, "--input_pixel_size")
        with pytest.raises(ValueError, match="--input_pixel_size"):
            input_pixel_size(volume, -1)


def _slices(tmp_path, sides):
    items = []
    for i, (h, w) in enumerate(sides):
        path = tmp_path / f"s{i}.tif"
        tifffile.imwrite(path, np.zeros((h, w), np.uint8))
        items.append({"image": str(path)})
    return items


def test_the_model_pixel_size_is_one_canvas_pixel_in_training(tmp_path, caplog):
    items = _slices(tmp_path, [(128, 100), (100, 128), (128, 128)])
    assert training_pixel_size(items, 8.0, canvas=256) == pytest.approx(4.0)  # 128 px at 8 nm fill 256 px
    with caplog.at_level(logging.WARNING):
        assert training_pixel_size(_slices(tmp_path, [(64, 64), (128, 128), (256, 256)]), 8.0, 256) == 4.0
    assert "longest sides from 64 to 256" in caplog.text
    with pytest.raises(ValueError, match="empty"):
        training_pixel_size([], 8.0, 256)


class _Head(torch.nn.Module):
    def __init__(self, normalization="per_image"):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        ImagePreprocessing(normalization).attach(self)


def test_weights_record_the_pixel_size_and_a_loading_head_adopts_it(tmp_path):
    trained = _Head()
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"pixel_size": 8.0, "training": []}))
    items = _slices(tmp_path, [(128, 128)])
    size = record_training_pixel_size(trained, pixel_size=None, datalist=datalist, items=items, canvas=256)
    assert size == pytest.approx(4.0)
    state = trained.state_dict()
    assert float(state[PIXEL_SIZE_KEY]) == pytest.approx(4.0)
    assert ImagePreprocessing.recorded(state).pixel_size == pytest.approx(4.0)

    serving = _Head()  # as inference.yaml builds it: no pixel size configured
    assert serving.image_preprocessing.pixel_size is None
    serving.load_state_dict(torch.load(_save(tmp_path, state), weights_only=True))
    assert serving.image_preprocessing.pixel_size == pytest.approx(4.0)
    assert serving.image_preprocessing == ImagePreprocessing("per_image")  # the pixel size is not compared

    with pytest.raises(ValueError, match="prepared"):  # another normalisation is still refused
        _Head("prepared").load_state_dict(state)

    old = {k: v for k, v in state.items() if k != PIXEL_SIZE_KEY}  # weights that record none
    unknown = _Head()
    unknown.load_state_dict(old)
    assert unknown.image_preprocessing.pixel_size is None
    assert PIXEL_SIZE_KEY not in unknown.state_dict()


def _save(tmp_path, state):
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


def test_explicit_pixel_size_wins_and_none_records_none(tmp_path):
    items = _slices(tmp_path, [(64, 64)])
    head = _Head()
    assert record_training_pixel_size(head, pixel_size=2.0, datalist=None, items=items, canvas=256) == 0.5
    none = _Head()
    absent = tmp_path / "absent.json"
    assert record_training_pixel_size(none, pixel_size=None, datalist=absent, items=items, canvas=256) is None
    assert PIXEL_SIZE_KEY not in none.state_dict()
    with pytest.raises(ValueError, match="pixel_size"):
        ImagePreprocessing("per_image", pixel_size=0)


def test_prepare_records_the_slices_pixel_size_after_downscale(tmp_path):
    cells = [write_cell(tmp_path, f"c{i}", z=6, shape=(24, 32), seed=i) for i in range(2)]
    for cell in cells:
        tifffile.imwrite(
            cell["image"],
            cell["array"],
            imagej=True,
            resolution=(1 / 0.004, 1 / 0.004),
            metadata={"unit": "um", "axes": "ZYX"},
        )
    summary = prepare_dataset([cell_source(c) for c in cells], tmp_path / "o", downscale=2, progress=False)
    assert datalist_pixel_size(summary["datalist"]) == pytest.approx(8.0)
    assert json.loads(summary["manifest"].read_text())["pixel_size"] == pytest.approx(8.0)

    # no resolution metadata: no pixel size, and a warning that says how to give one
    plain = [write_cell(tmp_path / "plain", f"c{i}", z=6, shape=(24, 32), seed=i) for i in range(2)]
    summary = prepare_dataset([cell_source(c) for c in plain], tmp_path / "p", progress=False)
    assert datalist_pixel_size(summary["datalist"]) is None
    assert any("pixel_size" in w for w in summary["warnings"])
