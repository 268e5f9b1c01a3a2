"""Whole datasets: the model's pixel size, tiles, several ranks writing one OME-Zarr store, resuming, --roi.

A tiny ScSAM (random seeded weights, the same in every process) that records a pixel size of 4 nm segments small
TIFF stacks; the OME-Zarr outputs are read back with zarr-python, not with our reader. The ranks are real gloo
processes (``torch.multiprocessing``), as ``torchrun`` starts them.
"""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import tifffile
import torch
import torch.multiprocessing as mp
import zarr

from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.engines.inference_job import list_inputs, placement, segment_inputs, segment_volume
from scsam_monai.engines.tiling import Tiling, segment_tiled
from scsam_monai.io.readers import open_volume
from scsam_monai.io.writers.ome_zarr_store import OmeZarrLabelStore, StoreMismatchError
from scsam_monai.model import build_scsam
from tests.helpers import free_port

CLASSES = ["background", "nucleus", "mitochondria", "granules"]
MODEL_NM = 4.0


def tiny_model(pixel_size: float | None = MODEL_NM) -> torch.nn.Module:
    """The tiny ScSAM with seeded random weights (equal in every process), recording ``pixel_size``."""
    torch.manual_seed(0)
    model = build_scsam(
        class_names=CLASSES,
        sam_arch="tiny",
        sam_allow_random_weights=True,
        mae_arch="tiny",
        mae_allow_random_weights=True,
    )
    if pixel_size is not None:
        model.preprocessing.with_pixel_size(pixel_size).attach(model.head)
    return model.eval()


def write_stack(path, depth=5, shape=(300, 420), nm: float | None = MODEL_NM, seed=0):
    """A uint8 TIFF stack with smooth structures (and its pixel size in ImageJ metadata when ``nm`` is given)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    stack = np.stack(
        [
            (120 + 60 * np.sin(yy / (9 + k) + rng.random()) * np.cos(xx / (13 + k)) + rng.normal(0, 8, shape))
            .clip(0, 255)
            .astype(np.uint8)
            for k in range(depth)
        ]
    )
    if nm is None:
        tifffile.imwrite(path, stack, photometric="minisblack")
    else:
        meta = {"unit": "um", "axes": "ZYX"}
        tifffile.imwrite(path, stack, imagej=True, resolution=(1e3 / nm, 1e3 / nm), metadata=meta)
    return stack


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _labels(path):
    return np.asarray(zarr.open_group(str(path), mode="r")["0"][:])


def _run(model, stack, out, **kwargs):
    options = dict(output_format="zarr", class_names=CLASSES, overlay_slices=None, progress=False, batch_size=2)
    return segment_inputs(model, stack, out, summary_overlay=None, **{**options, **kwargs})


# ---- the pixel size --------------------------------------------------------------------------------------------


def test_weights_without_a_pixel_size_are_resized_onto_the_canvas_as_before(tmp_path, caplog):
    stack = tmp_path / "s.tif"
    write_stack(stack, depth=1)
    with open_volume(stack) as volume, caplog.at_level(logging.WARNING):
        tiling, scale, record = placement(tiny_model(None), volume, None, 0.25, 4)
    assert tiling is None and record["model"] is None
    assert "record no pixel size" in caplog.text


def test_an_input_without_a_pixel_size_is_taken_at_the_models_with_a_warning(tmp_path, model, caplog):
    stack = tmp_path / "s.tif"
    write_stack(stack, depth=1, nm=None)
    with open_volume(stack) as volume, caplog.at_level(logging.WARNING):
        tiling, scale, record = placement(model, volume, None, 0.25, 4)
    assert scale == 1.0 and tiling == Tiling(tile_size=256, overlap=0.25, batch_size=4)
    assert "assuming the model's pixel size, 4 nm" in caplog.text and "--input_pixel_size" in caplog.text
    with open_volume(stack) as volume:
        assert placement(model, volume, 8.0, 0.25, 4)[1] == 2.0  # --input_pixel_size


def test_slices_larger_than_the_canvas_are_tiled_at_the_models_pixel_size(tmp_path, model):
    stack = tmp_path / "s.tif"
    data = write_stack(stack, depth=2, shape=(300, 520))
    (record,) = _run(model, stack, tmp_path / "out")
    labels = _labels(record["label"])
    assert labels.shape == data.shape and record["tiling"]["tile_size"] == 256
    assert record["pixel_size"]["model"] == MODEL_NM and record["pixel_size"]["input"] == pytest.approx(MODEL_NM)
    # the same tiles, blended by hand: what the job wrote
    pre = model.preprocessing
    image = pre.normalizer(None)(data[1])
    expected, _ = segment_tiled(
        lambda x: model(x, fit_to_canvas=False), image, tiling=Tiling(256, 0.5, batch_size=2), scale=1.0
    )
    np.testing.assert_array_equal(labels[1], expected)
    assert len(np.unique(labels)) > 1


def test_an_input_at_another_pixel_size_is_resampled_and_written_on_its_own_grid(tmp_path, model):
    stack = tmp_path / "coarse.tif"
    data = write_stack(stack, depth=1, shape=(140, 150), nm=8.0)  # 8 nm: twice the model's pixel size
    (record,) = _run(model, stack, tmp_path / "out")
    assert record["pixel_size"]["scale"] == pytest.approx(2.0)
    labels = _labels(record["label"])
    assert labels.shape == data.shape  # the input's grid
    attrs = zarr.open_group(record["label"], mode="r").attrs.asdict()
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1:] == pytest.approx([0.008, 0.008])  # the input's spacing (µm, as the file gives it)


# ---- one store, several ranks, resuming ------------------------------------------------------------------------


def _rank_main(rank: int, world: int, port: int, stack: str, out: str, scenario: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    model = tiny_model()
    if scenario == "kill" and rank == 1:  # dies (SIGKILL) right after its first slice is complete
        original = OmeZarrLabelStore.write_slice

        def write_then_die(self, z, labels, probabilities=None):
            original(self, z, labels, probabilities)
            os.kill(os.getpid(), signal.SIGKILL)

        OmeZarrLabelStore.write_slice = write_then_die
    if scenario == "fail":
        if rank == 1:  # a corrupt slice on rank 1
            from scsam_monai.io.readers import volume as volume_module

            original_read = volume_module.Volume.read_slice

            def read(self, index, axis=0):
                if index == 3:  # rank 1's second slice (tiled slices are dealt out one by one)
                    raise volume_module.DataPreparationError(f"{self.source}: slice 3 is corrupt")
                return original_read(self, index, axis)

            volume_module.Volume.read_slice = read
        else:  # rank 0 is slower, so it is still working when rank 1 fails
            forward = type(model).forward

            def slow(self, images, fit_to_canvas=True):
                import time

                time.sleep(0.5)
                return forward(self, images, fit_to_canvas)

            type(model).forward = slow
    try:
        _run(model, stack, out)
        results[rank] = "ok"
    except Exception as err:  # noqa: BLE001 - reported to the test
        results[rank] = f"{type(err).__name__}: {err}"


def _spawn(world, stack, out, scenario="plain"):
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(world, free_port(), str(stack), str(out), scenario, results), nprocs=world, join=True)
    return dict(results)


def test_one_and_two_ranks_write_the_same_labels_into_one_store(tmp_path):
    stack = tmp_path / "s.tif"
    write_stack(stack, depth=5, shape=(64, 300))  # two tiles a slice
    assert _spawn(1, stack, tmp_path / "one") == {0: "ok"}
    assert _spawn(2, stack, tmp_path / "two") == {0: "ok", 1: "ok"}
    one, two = _labels(tmp_path / "one" / "s_seg.zarr"), _labels(tmp_path / "two" / "s_seg.zarr")
    np.testing.assert_array_equal(one, two)  # bit for bit, whatever the number of ranks
    assert OmeZarrLabelStore.open  # the store is complete and readable by zarr
    assert zarr.open_group(str(tmp_path / "two" / "s_seg.zarr"), mode="r")["0"].chunks[0] == 1


def test_a_killed_rank_is_resumed_by_the_same_command_without_recomputing(tmp_path):
    stack = tmp_path / "s.tif"
    write_stack(stack, depth=8, shape=(64, 96))
    with pytest.raises(mp.ProcessExitedException):
        _spawn(2, stack, tmp_path / "out", scenario="kill")
    done = sorted(int(p.name) for p in (tmp_path / "out" / "s_seg.zarr" / ".scsam" / "done").iterdir())
    assert 0 < len(done) < 8

    written: list[int] = []
    original = OmeZarrLabelStore.write_slice

    def counting(self, z, labels, probabilities=None):
        written.append(z)
        original(self, z, labels, probabilities)

    OmeZarrLabelStore.write_slice = counting
    try:
        (record,) = _run(tiny_model(), stack, tmp_path / "out")
    finally:
        OmeZarrLabelStore.write_slice = original
    assert sorted(written) == [z for z in range(8) if z not in done]  # completed slices are not written again
    (reference,) = _run(tiny_model(), stack, tmp_path / "reference")
    np.testing.assert_array_equal(_labels(record["label"]), _labels(reference["label"]))


def test_a_failing_rank_stops_every_rank_naming_the_slice(tmp_path):
    stack = tmp_path / "s.tif"
    write_stack(stack, depth=8, shape=(64, 64))
    results = _spawn(2, stack, tmp_path / "out", scenario="fail")
    assert "slice 3" in results[1], results
    assert results[0].startswith("DistributedError: stopped: rank1 failed") and "slice 3" in results[0], results
    store = tmp_path / "out" / "s_seg.zarr"
    done = {int(p.name) for p in (store / ".scsam" / "done").iterdir()}
    assert 3 not in done and len(done) < 8  # the failed slice is not marked complete, and rank 0 stopped early


def test_a_rerun_with_other_weights_or_tiling_is_refused_naming_the_change(tmp_path, model):
    stack = tmp_path / "s.tif"
    write_stack(stack, depth=2, shape=(64, 64))
    _run(model, stack, tmp_path / "out")
    other = tiny_model()
    with torch.no_grad():
        next(other.head.parameters()).add_(1e-3)
    with pytest.raises(StoreMismatchError, match="weights"):
        _run(other, stack, tmp_path / "out")
    with pytest.raises(StoreMismatchError, match="tiling"):
        _run(model, stack, tmp_path / "out", tile_overlap=0.25)
    with pytest.raises(StoreMismatchError, match="pixel_size"):
        _run(model, stack, tmp_path / "out", input_pixel_size=5.0)


def test_roi_segments_part_of_the_input_and_records_where(tmp_path, model):
    stack = tmp_path / "s.tif"
    data = write_stack(stack, depth=4, shape=(100, 120))
    (record,) = _run(model, stack, tmp_path / "out", roi="1:3,10:90,20:")
    labels = _labels(record["label"])
    assert labels.shape == (2, 80, 100) == tuple(data[1:3, 10:90, 20:].shape)
    datasets = zarr.open_group(record["label"], mode="r").attrs["multiscales"][0]["datasets"]
    translation = [t for t in datasets[0]["coordinateTransformations"] if t["type"] == "translation"][0]
    assert translation["translation"] == pytest.approx([1 * 1.0, 10 * 0.004, 20 * 0.004])


def test_the_input_given_wins_over_the_datalist_split(tmp_path, caplog):
    image = tmp_path / "mine.tif"
    write_stack(image, depth=1)
    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"test": [{"image": "other.tif"}]}')
    with caplog.at_level(logging.INFO):
        assert list_inputs(image, datalist=datalist, split="test") == [str(image)]
    assert "'test' split" in caplog.text


def test_predictions_json_records_model_pixel_sizes_tiling_ranks_and_time(tmp_path, model):
    import json

    stack = tmp_path / "s.tif"
    write_stack(stack, depth=1, shape=(64, 300))
    _run(model, stack, tmp_path / "out")
    (record,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert record["model"]["pixel_size"] == MODEL_NM and len(record["model"]["weights_sha256_16"]) == 16
    assert record["pixel_size"]["input_from"].endswith("µm)") or "metadata" in record["pixel_size"]["input_from"]
    assert record["tiling"]["overlap"] == 0.5 and record["ranks"] == 1 and record["seconds"] > 0


def test_two_ranks_need_an_ome_zarr_output(tmp_path, model):
    from scsam_monai.engines.ranks import Ranks

    stack = tmp_path / "s.tif"
    write_stack(stack, depth=1)
    with pytest.raises(ValueError, match="--output_format zarr"):
        segment_volume(model, stack, tmp_path, output_format="tiff", ranks=Ranks(0, 2), progress=False)


def test_the_model_preprocessing_keeps_its_normalisation_when_the_pixel_size_is_set(model):
    assert model.preprocessing == ImagePreprocessing("per_image") and model.preprocessing.pixel_size == MODEL_NM
