"""Tests of scsam_monai.engines.volume_inference: streaming slice-wise segmentation with the full ScSAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentilesd
from torch import nn

from scsam_monai.data.transforms import merge_class_logits
from scsam_monai.engines.volume_inference import normalize_slice, segment_slices
from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

C = 3


class IndexModel(nn.Module):
    """Fake image-to-logits model: slice i (filled with i / 100) gets class (i mod C) + 1 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        index = torch.round(images.mean(dim=(1, 2, 3)) * 100).long()
        winner = torch.nn.functional.one_hot(index % C, C).float() * 20 - 10  # (B, C)
        return (winner[:, :, None, None] * self.scale).expand(-1, -1, *images.shape[-2:])


def _slices(n: int, shape=(12, 10), counter: list | None = None):
    for i in range(n):
        if counter is not None:
            counter.append(i)
        yield np.full(shape, i / 100, dtype=np.float32)


def test_labels_per_slice_in_input_order_with_a_last_partial_batch():
    model = IndexModel()
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


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_generator_input_is_streamed_never_materialised(prefetch):
    pulled: list[int] = []
    ahead: list[int] = []
    batch_size = 2

    def writer(index: int, label: np.ndarray) -> None:
        ahead.append(len(pulled) - (index + 1))

    segment_slices(
        IndexModel(),
        _slices(40, counter=pulled),
        batch_size=batch_size,
        normalize=False,
        prefetch=prefetch,
        progress=False,
        writer=writer,
    )
    assert len(ahead) == 40
    assert max(ahead) <= batch_size * (prefetch + 2)
    if prefetch == 0:
        assert max(ahead) < batch_size  # nothing is read beyond the batch being segmented


def test_a_slice_of_another_size_starts_a_new_batch():
    model = IndexModel()
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
        segment_slices(IndexModel(), broken(), batch_size=1, progress=False, writer=lambda i, lab: None)


def test_normalize_slice_matches_the_bundle_preprocessing():
    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 300.0, (30, 20))).astype(np.uint16)
    bundle = ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    expected = bundle({"image": torch.as_tensor(image[None].astype(np.float32))})["image"]
    out = normalize_slice(image)
    assert out.shape == (1, 30, 20) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.as_tensor(expected).float())
    assert out.min() == 0 and out.max() == 1
    with pytest.raises(ValueError, match="2D slice"):
        normalize_slice(np.zeros((2, 4, 4)))


def test_full_scsam_labels_equal_the_model_on_each_normalised_slice():
    torch.manual_seed(0)
    sam = FrozenSamEncoder(arch="tiny", allow_random_weights=True)
    mae = FrozenMaeEncoder(arch="tiny", allow_random_weights=True)
    model = ScSAM(sam_encoder=sam, mae_encoder=mae, head=ScSAMHead(canvas_size=sam.img_size))
    rng = np.random.default_rng(1)
    volume = rng.normal(1000, 200, (3, 40, 56)).astype(np.float32)
    written = {}
    segment_slices(model, iter(volume), batch_size=2, progress=False, writer=lambda i, lab: written.update({i: lab}))
    assert sorted(written) == [0, 1, 2]
    with torch.inference_mode():
        for i, image in enumerate(volume):
            expected = merge_class_logits(model(normalize_slice(image)[None]))[0, 0].numpy()
            assert written[i].shape == (40, 56) and written[i].dtype == np.uint8
            # batched and single-slice calls may round differently: allow a pixel or two at a class boundary
            assert (written[i] != expected).mean() < 1e-3


def test_default_batch_is_one_slice_on_cpu_and_bad_sizes_are_refused():
    model = IndexModel()
    segment_slices(model, _slices(3), normalize=False, progress=False, writer=lambda i, lab: None)
    assert model.batch_sizes == [1, 1, 1]
    with pytest.raises(ValueError, match="batch_size"):
        segment_slices(model, _slices(1), batch_size=0, progress=False, writer=lambda i, lab: None)
