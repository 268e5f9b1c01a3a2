"""Tests of scsam_monai.engines.volume_inference: streaming slice-wise segmentation with the full ScSAM."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from scsam_monai.data.normalize import measure_volume_window, normalize_slice, volume_window
from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.engines.volume_inference import segment_slices
from scsam_monai.io.readers import DataPreparationError, Volume
from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.scsam import ScSAM
from tests.helpers import StandInModel, tiny_encoder

C = 3


def _slices(n: int, shape=(12, 10), counter: list | None = None):
    for i in range(n):
        if counter is not None:
            counter.append(i)
        yield np.full(shape, i / 100, dtype=np.float32)


def test_labels_per_slice_in_input_order_with_a_last_partial_batch():
    model = StandInModel("index", num_classes=C)
    written: list[tuple[int, np.ndarray]] = []
    count = segment_slices(
        model, _slices(7), batch_size=3, normalize=False, progress=False, writer=lambda i, lab: written.append((i, lab))
    )
    assert count == 7
    assert [i for i, _ in written] == list(range(7))
    assert model.batch_sizes == [3, 3, 1]
    for i, label in written:
        assert label.shape == (12, 10) and label.dtype == np.uint8
        assert (label == i % C + 1).all()


@pytest.mark.parametrize(("prefetch", "writeback"), [(0, 0), (1, 0), (0, 2), (2, 2)])
def test_generator_input_is_streamed_never_materialised(prefetch, writeback):
    pulled: list[int] = []
    ahead: list[int] = []
    batch_size = 2

    def writer(index: int, label: np.ndarray) -> None:
        ahead.append(len(pulled) - (index + 1))

    segment_slices(
        StandInModel("index", num_classes=C),
        _slices(40, counter=pulled),
        batch_size=batch_size,
        normalize=False,
        prefetch=prefetch,
        writeback=writeback,
        progress=False,
        writer=writer,
    )
    assert len(ahead) == 40
    assert max(ahead) <= batch_size * (prefetch + writeback + 3)  # the bound segment_slices promises
    if prefetch == 0 and writeback == 0:
        assert max(ahead) < batch_size  # nothing is read beyond the batch being segmented


def test_a_slice_of_another_size_starts_a_new_batch():
    model = StandInModel("index", num_classes=C)
    slices = [np.full((8, 8), 0.0), np.full((8, 8), 0.01), np.full((6, 9), 0.02), np.full((6, 9), 0.03)]
    shapes = {}
    segment_slices(
        model,
        slices,
        batch_size=4,
        normalize=False,
        progress=False,
        writer=lambda i, lab: shapes.update({i: lab.shape}),
    )
    assert model.batch_sizes == [2, 2]
    assert shapes == {0: (8, 8), 1: (8, 8), 2: (6, 9), 3: (6, 9)}


def test_errors_of_the_slice_reader_reach_the_caller():
    def broken():
        yield np.arange(64, dtype=np.float32).reshape(8, 8)
        raise OSError("page 2 unreadable")

    with pytest.raises(OSError, match="page 2"):
        segment_slices(
            StandInModel("index", num_classes=C), broken(), batch_size=1, progress=False, writer=lambda i, lab: None
        )


def test_slices_are_normalised_per_image_and_must_be_2d():
    """Each slice reaches the model as ``normalize_slice`` (the bundle's per-image preprocessing) gives it."""
    model = StandInModel("background", num_classes=C, record=True)
    rng = np.random.default_rng(0)
    slices = [rng.gamma(2.0, 300.0, (30, 20)).astype(np.uint16), rng.normal(0, 1, (1, 30, 20)).astype(np.float32)]
    segment_slices(model, iter(slices), batch_size=2, progress=False, writer=lambda i, lab: None)
    (batch,) = model.seen
    assert batch.shape == (2, 1, 30, 20) and batch.dtype == torch.float32
    for image, given in zip(slices, batch, strict=True):
        np.testing.assert_array_equal(given[0].numpy(), normalize_slice(image.reshape(30, 20)))
    with pytest.raises(ValueError, match="2D slice"):
        segment_slices(
            StandInModel("background", num_classes=C), [np.zeros((2, 4, 4))], progress=False, writer=lambda i, lab: None
        )


def test_full_scsam_labels_equal_the_model_on_each_normalised_slice():
    torch.manual_seed(0)
    sam = tiny_encoder("sam")
    mae = tiny_encoder("mae")
    model = ScSAM(sam_encoder=sam, mae_encoder=mae, head=build_scsam_head(canvas_size=sam.img_size))
    rng = np.random.default_rng(1)
    volume = rng.normal(1000, 200, (3, 40, 56)).astype(np.float32)
    written = {}
    segment_slices(model, iter(volume), batch_size=2, progress=False, writer=lambda i, lab: written.update({i: lab}))
    assert sorted(written) == [0, 1, 2]
    with torch.inference_mode():
        for i, image in enumerate(volume):
            expected = model(torch.from_numpy(normalize_slice(image))[None, None]).argmax(1)[0].numpy()
            assert written[i].shape == (40, 56) and written[i].dtype == np.uint8
            # batched and single-slice calls may round differently: allow a pixel or two at a class boundary
            assert (written[i] != expected).mean() < 1e-3


def test_default_batch_is_one_slice_on_cpu_and_bad_sizes_are_refused():
    model = StandInModel("index", num_classes=C)
    segment_slices(model, _slices(3), normalize=False, progress=False, writer=lambda i, lab: None)
    assert model.batch_sizes == [1, 1, 1]
    with pytest.raises(ValueError, match="batch_size"):
        segment_slices(model, _slices(1), batch_size=0, progress=False, writer=lambda i, lab: None)


def _raw_volume(depth: int = 4) -> np.ndarray:
    """A uint16 volume whose slices differ in brightness (per-image and per-volume windows then differ)."""
    rng = np.random.default_rng(3)
    return np.stack([rng.gamma(2.0, 200.0 * (z + 1), (18, 14)) for z in range(depth)]).clip(0, 65535).astype(np.uint16)


def _volume_of(array: np.ndarray, source: str = "raw.tif", fail_at: int | None = None) -> Volume:
    def read(index):
        if fail_at is not None and index[0] == fail_at:
            raise OSError("bad page")
        return array[index]

    return Volume(source=source, format="tiff", shape=array.shape, dtype=array.dtype, read=read)


@pytest.mark.parametrize("as_volume", [True, False])
def test_prepared_normalisation_uses_one_window_measured_over_the_whole_volume(as_volume):
    volume = _raw_volume()
    model = StandInModel("background", num_classes=C, record=True)
    slices = _volume_of(volume) if as_volume else list(volume)
    ImagePreprocessing("prepared").attach(model)  # the model's own preprocessing, as its weights record it
    segment_slices(model, slices, batch_size=4, progress=False, writer=lambda i, lab: 0)
    window = volume_window(iter(volume), source="raw.tif")
    assert window == measure_volume_window(_volume_of(volume))  # the window scsam-prepare measures
    (batch,) = model.seen
    for z, image in enumerate(volume):
        np.testing.assert_array_equal(batch[z, 0].numpy(), normalize_slice(image, window))
    assert not np.allclose(batch[0, 0].numpy(), normalize_slice(volume[0]))  # not the per-image normalisation


def test_prepared_needs_a_window_for_a_one_shot_iterator_and_unknown_values_are_refused():
    volume = _raw_volume(2)
    prepared = ImagePreprocessing("prepared")
    with pytest.raises(ValueError, match="window="):
        segment_slices(
            StandInModel("background", num_classes=C),
            iter(volume),
            preprocessing=prepared,
            progress=False,
            writer=print,
        )
    window = volume_window(iter(volume), source="raw.tif")
    model = StandInModel("background", num_classes=C, record=True)
    segment_slices(model, iter(volume), preprocessing=prepared, window=window, progress=False, writer=print)
    np.testing.assert_array_equal(model.seen[1][0, 0].numpy(), normalize_slice(volume[1], window))
    with pytest.raises(ValueError, match="image_normalization must be one of per_image, prepared"):
        ImagePreprocessing("per_volume")


def test_a_failing_read_of_a_volume_names_the_file_and_the_slice():
    written = []
    with pytest.raises(DataPreparationError, match=r"raw\.tif: slice 3 \(of 5\) cannot be read: .*bad page"):
        segment_slices(
            StandInModel("background", num_classes=C),
            _volume_of(_raw_volume(5), fail_at=3),
            progress=False,
            writer=lambda i, lab: written.append(i),
        )
    assert written == sorted(written) and 3 not in written


@pytest.mark.parametrize("writeback", [0, 2])
def test_a_failing_writer_stops_the_run_and_reaches_the_caller(writeback):
    written = []

    def writer(index, label):
        if index == 4:
            raise OSError("disk full")
        written.append(index)

    with pytest.raises(OSError, match="disk full"):
        segment_slices(
            StandInModel("index", num_classes=C),
            _slices(40),
            normalize=False,
            writeback=writeback,
            progress=False,
            writer=writer,
        )
    assert written == [0, 1, 2, 3]


def test_probabilities_reach_the_writer_with_each_label_map():
    got = {}
    segment_slices(
        StandInModel("index", num_classes=C),
        _slices(3),
        batch_size=2,
        normalize=False,
        probabilities=True,
        progress=False,
        writer=lambda i, lab, prob: got.update({i: (lab, prob)}),
    )
    assert sorted(got) == [0, 1, 2]
    for i, (label, prob) in got.items():
        assert (label == i % C + 1).all()
        assert prob.shape == (C, 12, 10) and prob.dtype == np.float32
        np.testing.assert_array_equal(label, prob.argmax(0) + 1)


def test_reading_the_model_and_writing_overlap():
    """Read, model and write each take 40 ms a slice: run one after the other they take 3 x 40 ms a slice, in the
    pipeline about 40 ms (the three threads sleep, so this holds on a busy machine)."""
    n, step = 12, 0.04

    def slow_slices():
        for i in range(n):
            time.sleep(step)
            yield np.full((8, 8), i / 100, np.float32)

    start = time.perf_counter()
    segment_slices(
        StandInModel("index", num_classes=C, delay=step),
        slow_slices(),
        normalize=False,
        progress=False,
        writer=lambda i, lab: time.sleep(step),
    )
    pipelined = time.perf_counter() - start
    start = time.perf_counter()
    segment_slices(
        StandInModel("index", num_classes=C, delay=step),
        slow_slices(),
        normalize=False,
        prefetch=0,
        writeback=0,
        progress=False,
        writer=lambda i, lab: time.sleep(step),
    )
    serial = time.perf_counter() - start
    assert serial >= 3 * n * step
    assert pipelined < 0.6 * serial, (pipelined, serial)


def test_reader_and_writer_threads_end_promptly_when_the_model_fails():
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="device lost"):
        segment_slices(
            StandInModel("index", num_classes=C, fail_on_call=2),
            _slices(4),
            normalize=False,
            progress=False,
            writer=lambda i, lab: None,
        )
    assert time.perf_counter() - start < 5
    assert not [t.name for t in threading.enumerate() if t.name.startswith("segment_slices-")]


class _TileModel(torch.nn.Module):
    """Stand-in for ScSAM at its own pixel size: logits from a fixed 3x3 convolution of each tile."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1 + C, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 4)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator))

    def forward(self, images: torch.Tensor, fit_to_canvas: bool = True) -> torch.Tensor:
        assert fit_to_canvas is False
        return self.conv(images)


@pytest.mark.parametrize("normalization", ["prepared", "per_image"])
def test_tiled_slices_are_normalised_band_by_band_in_their_own_dtype(monkeypatch, normalization):
    """A large slice reaches the tiling as read (uint8: a quarter of float32's memory) and is normalised band by
    band, with the volume's window or its own percentiles: the labels equal those of the slices normalised whole
    beforehand."""
    import scsam_monai.engines.volume_inference as volume_inference
    from scsam_monai.engines.tiling import Tiling

    rng = np.random.default_rng(0)
    slices = [rng.integers(20, 220, (150, 170), dtype=np.uint8) for _ in range(2)]
    slices[1][:40] = 255  # another intensity range than slice 0: per image, another window
    window = volume_window(iter(slices), source="the test slices") if normalization == "prepared" else None
    seen: list[str] = []
    original = volume_inference.segment_tiled

    def recording(model, image, **kwargs):
        seen.append(str(image.dtype))
        return original(model, image, **kwargs)

    monkeypatch.setattr(volume_inference, "segment_tiled", recording)
    results = {}
    for name, inputs, normalize in (
        ("banded", slices, True),
        ("whole", [normalize_slice(s, window) for s in slices], False),
    ):
        written: dict[int, np.ndarray] = results.setdefault(name, {})
        segment_slices(
            _TileModel().eval(),
            iter(inputs),
            normalize=normalize,
            preprocessing=ImagePreprocessing(normalization),
            window=window,
            tiling=Tiling(64, overlap=0.25),
            progress=False,
            writer=written.__setitem__,
        )
    assert seen == ["uint8", "uint8", "torch.float32", "torch.float32"]  # raw slices, then normalised batches
    assert sorted(results["banded"]) == [0, 1]
    for i in range(2):
        assert len(np.unique(results["whole"][i])) > 1
        np.testing.assert_array_equal(results["banded"][i], results["whole"][i])
