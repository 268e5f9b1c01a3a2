"""Datalists of the experiments: absolute paths, per-profile caps, subsets and cross-dataset datalists."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.datalists import cross_dataset_datalists, prepare_datalist, split_subsets
from scsam_monai.baselines.supervised import CanvasInferer


def _items(prefix, n, **extra):
    return [{"image": f"images/{prefix}_{i}.tif", "label": f"labels/{prefix}_{i}.tif", **extra} for i in range(n)]


def test_prepare_datalist_makes_paths_absolute_and_caps_splits(tmp_path):
    source = tmp_path / "data" / "datalist.json"
    source.parent.mkdir()
    source.write_text(json.dumps({"training": _items("t", 5), "validation": _items("v", 2), "test": _items("x", 3)}))
    data = prepare_datalist(source, tmp_path / "out" / "datalist.json", {"training": 2, "test": 1})
    assert [len(data[s]) for s in ("training", "validation", "test")] == [2, 2, 1]
    assert data["training"][0]["image"] == str(tmp_path / "data" / "images" / "t_0.tif")
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == data


def test_prepare_datalist_needs_every_split(tmp_path):
    source = tmp_path / "datalist.json"
    source.write_text(json.dumps({"training": _items("t", 2), "validation": _items("v", 1)}))
    with pytest.raises(ValueError, match="'test'"):
        prepare_datalist(source, tmp_path / "out.json")


def test_subsets_from_condition_or_cell_names_give_both_directions(tmp_path):
    data = {
        "training": _items("h", 2, condition="high glucose") + _items("l", 2, cell="low_c1_source.tif"),
        "validation": _items("hv", 1, condition="high glucose") + _items("lv", 1, cell="low_c2.tif"),
        "test": _items("ht", 1, condition="high glucose") + _items("x", 1),
    }
    subsets = split_subsets(data)
    assert sorted(subsets) == ["high", "low"]
    assert len(subsets["high"]["training"]) == 2 and len(subsets["low"]["validation"]) == 1
    pairs = cross_dataset_datalists(subsets, tmp_path)
    assert [(a, b) for a, b, _ in pairs] == [("high", "low"), ("low", "high")]
    high_to_low = json.loads(pairs[0][2].read_text())
    assert [i["image"] for i in high_to_low["training"]] == ["images/h_0.tif", "images/h_1.tif"]
    assert len(high_to_low["test"]) == 3  # low has no test items: all of its items are tested
    low_to_high = json.loads(pairs[1][2].read_text())
    assert [i["image"] for i in low_to_high["test"]] == ["images/ht_0.tif"]
    assert cross_dataset_datalists(split_subsets({"training": _items("t", 1)}), tmp_path) == []


def test_canvas_inferer_returns_logits_at_the_image_size():
    seen = []

    def network(x):
        seen.append(tuple(x.shape))
        return x.repeat(1, 4, 1, 1)

    out = CanvasInferer(64)(torch.rand(2, 1, 50, 100), network)
    assert seen == [(2, 1, 64, 64)] and out.shape == (2, 4, 50, 100)
