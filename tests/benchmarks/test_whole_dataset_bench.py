"""Tests of the whole-dataset benchmark (benchmarks.whole_dataset): its inputs, its quick mode's fields and report.

No test asserts a timing or a memory bound: the machines that run tests are shared and noisy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import benchmarks.run as run_module
from benchmarks.cli import main as benchmark_main
from benchmarks.report import check_targets, compute_ratios
from benchmarks.whole_dataset import PIXEL_NM, QUICK, main, markdown_lines, tiles_per_slice, write_ome_zarr
from scsam_monai.engines.tiling import Tiling, segment_tiled
from scsam_monai.io.readers import open_volume


@pytest.mark.parametrize("size", [200, 256, 320, 1024, 2048])
def test_tile_count_is_the_number_of_tiles_the_product_segments(size):
    seen = []

    def model(tiles: torch.Tensor) -> torch.Tensor:
        seen.append(tiles.shape[0])
        return torch.zeros(tiles.shape[0], 4, *tiles.shape[-2:])

    segment_tiled(model, np.zeros((size, size), np.float32), tiling=Tiling(tile_size=256, batch_size=8))
    assert sum(seen) == tiles_per_slice(size, 256)


def test_inputs_are_uint8_ome_zarr_at_the_models_pixel_size(tmp_path):
    path = write_ome_zarr(tmp_path / "in.zarr", 3, 300, chunk=128)
    with open_volume(path) as volume:
        assert volume.shape == (3, 300, 300) and np.dtype(volume.dtype) == np.uint8
        assert volume.spacing[-2:] == (PIXEL_NM, PIXEL_NM) and volume.unit == "nanometer"
        first, second = volume.read_slice(0), volume.read_slice(1)
    assert first.std() > 5 and not np.array_equal(first, second)  # textured, and slices differ


def test_whole_dataset_targets_apply_only_when_the_section_ran():
    assert "tiled_pipeline_over_model" not in check_targets(compute_ratios({}))
    ratios = compute_ratios(
        {"whole_dataset": {"ratios": {"tiled_pipeline_over_model": 0.9, "two_ranks_over_one": 1.2}}}
    )
    targets = check_targets(ratios)
    assert targets["tiled_pipeline_over_model"]["met"] is True and targets["two_ranks_over_one"]["met"] is False


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``python -m benchmarks.whole_dataset --quick`` (about 1.5 minutes on 2 idle CPU cores)."""
    out = tmp_path_factory.mktemp("whole_dataset")
    assert main(["--out", str(out), "--quick", "--timeout", "600"]) == 0
    return json.loads((out / "whole_dataset.json").read_text()), (out / "whole_dataset.md").read_text()


@pytest.mark.slow
def test_quick_mode_measures_every_figure_and_says_how(quick):
    result, markdown = quick
    assert result["quick"] is True and result["random_weights"] is True
    assert result["settings"]["sam_arch"] == "tiny" and result["environment"]["cpu_count"] >= 1
    pipe = result["tiled_pipeline"]
    assert pipe["pipeline_over_model"] == result["ratios"]["tiled_pipeline_over_model"] > 0
    assert pipe["tiles"] == QUICK.pipeline_slices * tiles_per_slice(QUICK.pipeline_size, 256) > QUICK.pipeline_slices
    assert len(pipe["pipeline_seconds"]) == len(pipe["model_alone_seconds"]) == QUICK.pipeline_repeats
    assert all(v > 0 for v in pipe["cpu_busy_threads"].values())
    scaling = result["rank_scaling"]
    assert [run["ranks"] for run in scaling["runs"]] == [1, 2]
    assert all(run["seconds"] > 0 and run["slices_per_s"] > 0 for run in scaling["runs"])
    assert scaling["two_ranks_over_one"] == result["ratios"]["two_ranks_over_one"] > 0
    assert scaling["labels_identical"] is True  # one and two ranks write the same labels
    for run in scaling["runs"]:  # the exact launches: torchrun running the bundle's inference
        assert (
            f"torch.distributed.run --standalone --nproc_per_node={run['ranks']} -m monai.bundle run" in run["command"]
        )
    rss = result["peak_rss"]
    assert [row["size"] for row in rss["sizes"]] == list(QUICK.rss_sizes)
    assert all(row["peak_rss_bytes"] >= row["baseline_rss_bytes"] > 0 for row in rss["sizes"])
    marks = rss["counts"]["checkpoints"]
    assert [m["slices"] for m in marks] == [QUICK.rss_count_slices, 4 * QUICK.rss_count_slices]
    assert all(m["peak_rss_bytes"] > 0 for m in marks) and result["ratios"]["rss_4n_over_n"] > 0
    assert rss["target"]["value_gib"] is None and rss["target"]["met"] is None  # the largest slice only on request
    for key in ("tiled_pipeline", "rank_scaling", "peak_rss"):  # every figure says what made it
        command = result[key]["command"]
        assert command.startswith("python -m benchmarks.whole_dataset") and "--quick" in command
        assert f"`{command}`" in markdown
    assert "`pipeline_over_model`" in markdown and "`two_ranks_over_one`" in markdown and "**Peak RSS**" in markdown
    assert "Quick mode" in markdown and "RANDOM weights" in markdown


@pytest.mark.slow
def test_the_section_of_scripts_benchmark_reports_it_with_its_targets(quick, tmp_path, monkeypatch):
    result, _ = quick
    asked = {}

    def measured(**kwargs):
        asked.update(kwargs)
        return {k: v for k, v in result.items() if k not in ("schema", "created", "command", "environment")}

    monkeypatch.setattr(run_module, "measure_whole_dataset", measured)
    args = ["--profile", "tiny", "--out", str(tmp_path), "--device", "cpu", "--sections", "whole_dataset", "--quick"]
    assert benchmark_main(args) == 0
    # the tiny profile leaves the architecture to the section (its test encoders on SAM's canvas unless quick)
    assert asked["quick"] is True and asked["threads"] == 1 and asked["sam_arch"] is None
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["ratios"]["tiled_pipeline_over_model"] == result["ratios"]["tiled_pipeline_over_model"]
    assert report["targets"]["two_ranks_over_one"]["target"] == ">= 1.6"
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "## Whole datasets" in markdown and "\n".join(markdown_lines(report["whole_dataset"])) in markdown


def test_full_sizes_tile_every_measured_slice_on_the_default_canvas():
    """The full sizes tile on the default encoders' 1024 canvas (as ViT-B would), and the smoke sizes on tiny's 256."""
    from benchmarks.whole_dataset import FULL, QUICK, _canvas, default_arch, tiles_per_slice

    full_canvas = _canvas({"sam_arch": default_arch(quick=False)})
    assert full_canvas == 1024 and _canvas({"sam_arch": default_arch(quick=True)}) == 256
    for size in (FULL.pipeline_size, FULL.scaling_size, *FULL.rss_sizes, FULL.rss_largest):
        assert tiles_per_slice(size, full_canvas) > 1, size
    assert tiles_per_slice(QUICK.pipeline_size, 256) > 1
