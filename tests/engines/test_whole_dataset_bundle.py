"""Whole datasets through the bundle as users run it: training records the pixel size, ``torchrun`` shards inference.

The demo profile (tiny random-weight encoders) trains on a small synthetic set declared to be at 8 nm, so that
its weights record a model pixel size of 4 nm (128-pixel slices on the 256-pixel canvas). That model then
segments a mosaic of the demo's synthetic slices in two tilings, and a stack through
``torchrun --nproc_per_node 2 -m monai.bundle run inference``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
import torch
import zarr

from scsam_monai.bundle_command import bundle_command
from scsam_monai.data.preprocessing import PIXEL_SIZE_KEY
from scsam_monai.synthetic import synthesize_slice
from tests.engines.test_whole_dataset import tiny_model
from tests.helpers import run_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_demo_bundle):
    work, overrides, _ = trained_demo_bundle
    return work, overrides


def test_training_records_the_models_pixel_size_with_its_weights(trained):
    work, _ = trained
    state = torch.load(work / "out" / "models" / "model.pt", weights_only=True)
    assert float(state[PIXEL_SIZE_KEY]) == pytest.approx(4.0)  # 8 nm x 128 px / 256 px canvas


def _trained_model(work) -> torch.nn.Module:
    model = tiny_model(None)  # the random tiny encoders the demo profile trained with
    model.load_state_dict(torch.load(work / "out" / "models" / "model.pt", weights_only=True))
    assert model.preprocessing.pixel_size == pytest.approx(4.0)
    return model.eval()


def test_two_tilings_offset_by_half_a_tile_agree(trained):
    """The trained model on a 768² mosaic of the demo generator's slices: tiles of 256, the second grid 128 in.

    With the default overlap, 128 pixels is one tiling step: the second grid's tiles are the first grid's but those
    of its first row and column, so the labels may differ only near that edge (the blending there has one tile
    fewer) and agree beyond it. benchmarks/tiling_agreement.py measures grids that cut every tile differently too.
    """
    from benchmarks.tiling_agreement import tiling_agreement

    work, _ = trained
    result = tiling_agreement(_trained_model(work), 768, overlap=0.5)
    assert result["shared_tiles"] and result["interior_agreement"] >= 0.999, result
    assert result["agreement"] >= 0.95, result
    assert result["classes_found"] > 2  # it segments something, not one class everywhere


def test_torchrun_two_ranks_write_the_one_rank_labels_and_the_input_wins_over_infer_split(trained, tmp_path):
    work, overrides = trained
    rng = np.random.default_rng(3)
    # 3 slices of 6 tiles each at the model's 4 nm: the ranks split them 2 + 1
    stack = np.stack([synthesize_slice((300, 400), seed=int(s))[0] for s in rng.integers(0, 1000, 3)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(250.0, 250.0), metadata={"unit": "um", "axes": "ZYX"})
    configs = ["train.yaml", "inference.yaml", "demo.yaml"]

    def infer(ranks: int, out) -> str:
        more = {**overrides, "input": path, "output_format": "zarr", "prediction_dir": out, "batch_size": 2}
        command = bundle_command("inference", configs, overrides=more)
        if ranks > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
            command = [*torchrun, *command[1:]]
        result = run_command(command, cwd=work, env={"OMP_NUM_THREADS": 1})
        return result.stdout + result.stderr

    infer(1, tmp_path / "one")
    log = infer(2, tmp_path / "two")
    one = zarr.open_group(str(tmp_path / "one" / "stack_seg.zarr"), mode="r")
    two = zarr.open_group(str(tmp_path / "two" / "stack_seg.zarr"), mode="r")
    np.testing.assert_array_equal(one["0"][:], two["0"][:])
    assert two["0"].shape == stack.shape and len(np.unique(two["0"][:])) > 2  # labels, not one class everywhere
    assert not list((tmp_path / "two").glob("test_*"))  # the datalist's test split was not segmented
    assert "infer_split" in log
