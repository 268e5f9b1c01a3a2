"""Tests of scsam_monai.engines.tiling: slices at the model's pixel size, in Gaussian-blended tiles, in row bands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from torch import nn

from scsam_monai.data.transforms import merge_class_logits
from scsam_monai.engines.tiling import (
    Tiling,
    _class_logit_bands,
    needs_tiling,
    resampled_shape,
    segment_tiled,
)

TILE = 64


class ConvModel(nn.Module):
    """Stand-in model: a fixed convolution, ``(b, 1, h, w)`` -> ``(b, 1 + 3, h, w)`` logits, deterministic.

    Each channel is a linear function of a local weighted mean of the image (random positive kernel), so that dark
    pixels are class 1, then come background, class 2 and, brightest, class 3. Translation-equivariant except
    within ``kernel // 2`` pixels of a tile border (zero padding), like a real model that sees less context there;
    ``kernel=1`` makes it a pointwise function of the image.
    """

    def __init__(self, kernel: int = 3, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, kernel, padding=kernel // 2)
        weights = torch.rand((4, 1, kernel, kernel), generator=generator) + 0.5
        weights = weights / weights.sum(dim=(1, 2, 3), keepdim=True)
        slope, cut = torch.tensor([0.0, -10.0, 10.0, 30.0]), torch.tensor([0.0, 0.25, 0.35, 0.7])
        with torch.no_grad():
            self.conv.weight.copy_(weights * slope[:, None, None, None])
            self.conv.bias.copy_(-slope * cut)
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        return self.conv(images)


class TileRampModel(ConvModel):
    """Not translation-equivariant: adds a ramp across each tile, as a model whose output depends on tile position."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-4, 4, images.shape[-1])
        logits = super().forward(images)
        return logits + torch.stack([0 * ramp, ramp, -ramp, 0 * ramp])[None, :, None, :]


def smooth_image(height: int, width: int, cell: int = 12, seed: int = 0) -> np.ndarray:
    """Smooth float32 ``(height, width)`` image in [0, 1]: noise on a ``cell``-pixel grid upsampled bilinearly."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, height // cell + 2, width // cell + 2), generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return (image / image.max()).numpy().astype(np.float32)


def class_logits(model, image, tiling: Tiling, scale: float = 1.0, probe: dict | None = None) -> torch.Tensor:
    """The blended class logits ``(C, H, W)`` on the input grid, checking that the bands tile it in order."""
    bands = []
    with torch.inference_mode():
        for top, band in _class_logit_bands(model, image, tiling=tiling, scale=scale, probe=probe):
            assert top == sum(b.shape[1] for b in bands)
            bands.append(band)
    return torch.cat(bands, dim=1)


@pytest.mark.parametrize(("overlap", "sigma_scale"), [(0.25, 0.125), (0.6, 0.25)])
def test_blended_logits_match_monai_sliding_window(overlap, sigma_scale):
    model = ConvModel()
    image = smooth_image(300, 457)  # neither side a multiple of the step
    ours = class_logits(model, image, Tiling(TILE, overlap=overlap, sigma_scale=sigma_scale))
    inferer = SlidingWindowInferer(
        roi_size=(TILE, TILE), sw_batch_size=4, overlap=overlap, mode="gaussian", sigma_scale=sigma_scale
    )
    with torch.inference_mode():
        reference = inferer(torch.from_numpy(image)[None, None], lambda tiles: model(tiles)[:, 1:])[0]
    assert ours.shape == reference.shape == (3, 300, 457)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0])
def test_tall_slice_is_blended_in_bands_of_one_tile_row(scale):
    tiling = Tiling(TILE, overlap=0.25)
    model = ConvModel()
    events: list[str] = []

    def recording_model(tiles: torch.Tensor) -> torch.Tensor:
        events.append("tiles")
        return model(tiles)

    probe: dict = {}
    with torch.inference_mode():
        for _, band in _class_logit_bands(
            recording_model, smooth_image(2000, 100), tiling=tiling, scale=scale, probe=probe
        ):
            events.append(f"rows {band.shape[1]}")
    bound = tiling.tile_size + tiling.step
    assert 0 < probe["buffer_rows"] <= bound  # full-slice sums would hold 2000 * scale rows
    if scale != 1.0:
        assert 0 < probe["carry_rows"] <= bound
    assert sum(int(e.split()[1]) for e in events if e.startswith("rows")) == 2000
    # rows leave as soon as the tile rows that touch them are done, long before the last model call
    first_rows = events.index(next(e for e in events if e.startswith("rows")))
    assert first_rows <= 2 * events.count("tiles") / 10


def test_shifted_tile_grid_gives_the_same_labels():
    tiling = Tiling(TILE, overlap=0.25)
    image = smooth_image(320, 352)
    shift = TILE // 2  # the crop's tiles straddle the full image's tile borders

    def agreement(model: nn.Module) -> float:
        """Share of pixels labelled alike in the image and the crop, one pixel (the image border) left out."""
        full, _ = segment_tiled(model, image, tiling=tiling)
        crop, _ = segment_tiled(model, image[shift:, shift:], tiling=tiling)
        assert len(np.unique(full)) == 4
        return float((full[shift + 1 : -1, shift + 1 : -1] == crop[1:-1, 1:-1]).mean())

    assert agreement(ConvModel()) >= 0.99
    # the measure sees tiles: a model whose logits depend on the position in the tile disagrees with itself
    assert agreement(TileRampModel()) < 0.9


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_resampled_slice_comes_back_on_the_input_grid(scale):
    tiling = Tiling(TILE, overlap=0.25)
    model = ConvModel(kernel=1)  # pointwise: resampling a smooth image barely changes its labels
    image = smooth_image(200, 300, cell=40)
    labels, probs = segment_tiled(model, image, tiling=tiling, scale=scale, probabilities=True)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert probs.shape == (3, *image.shape) and probs.dtype == np.float32
    plain, _ = segment_tiled(model, image, tiling=tiling)
    assert len(np.unique(plain)) >= 3
    assert (labels == plain).mean() >= 0.98


@pytest.mark.parametrize("scale", [0.5, 2.0, 0.37, 1.7])
def test_band_resampling_equals_whole_slice_resampling(scale):
    tiling = Tiling(TILE, overlap=0.25)
    model = ConvModel()
    image = smooth_image(150, 230)
    shape = resampled_shape(image.shape, scale)
    streamed = class_logits(model, image, tiling, scale=scale)
    whole = F.interpolate(
        torch.from_numpy(image)[None, None], size=shape, mode="bilinear", align_corners=False, antialias=scale < 1
    )[0, 0]
    model_grid = class_logits(model, whole, tiling)
    reference = F.interpolate(model_grid[None], size=image.shape, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(streamed, reference, rtol=0, atol=1e-4)
    _, probs = segment_tiled(model, image, tiling=tiling, scale=scale, probabilities=True)
    np.testing.assert_allclose(probs, torch.sigmoid(reference).numpy(), rtol=0, atol=1e-4)


def test_tiles_of_a_row_are_batched_without_changing_the_result():
    image = smooth_image(300, 457)  # 6 tile rows of 10 tiles
    results = {}
    for batch_size in (1, 3):
        model = ConvModel()
        results[batch_size] = segment_tiled(
            model, image, tiling=Tiling(TILE, overlap=0.25, batch_size=batch_size), probabilities=True
        )
        assert model.batch_sizes == ([1] * 10 if batch_size == 1 else [3, 3, 3, 1]) * 6  # batches stay in a row
    assert (results[1][0] == results[3][0]).all()
    # float32 convolutions sum in a batch-size-dependent order: a few ulps apart, not more
    np.testing.assert_allclose(results[1][1], results[3][1], rtol=0, atol=1e-5)


def test_slice_that_fits_is_one_call_on_the_whole_slice():
    model = ConvModel()
    image = smooth_image(40, 57)
    labels, probs = segment_tiled(model, image, tiling=Tiling(TILE, overlap=0.25), probabilities=True)
    assert model.batch_sizes == [1]
    with torch.inference_mode():
        classes = model(torch.from_numpy(image)[None, None])[0, 1:]
    assert (labels == merge_class_logits(classes, 0.5)[0].numpy()).all()
    np.testing.assert_array_equal(probs, torch.sigmoid(classes).numpy())
    assert not needs_tiling(image.shape, 1.0, TILE) and needs_tiling(image.shape, 1.2, TILE)
    assert resampled_shape((40, 57), 0.5) == (20, 28) and resampled_shape((1, 1), 0.1) == (1, 1)


def test_probabilities_are_the_sigmoid_of_the_blended_class_logits():
    model = ConvModel()
    image = smooth_image(130, 150)
    tiling = Tiling(TILE, overlap=0.25)
    labels, probs = segment_tiled(model, image, tiling=tiling, probabilities=True, threshold=0.7)
    logits = class_logits(model, image, tiling)
    assert probs.shape == (3, 130, 150)
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), rtol=0, atol=1e-6)
    assert (labels == merge_class_logits(logits, 0.7)[0].numpy()).all()
    assert segment_tiled(model, image, tiling=tiling)[1] is None

    def many_classes(tiles: torch.Tensor) -> torch.Tensor:  # 300 classes, the last one wins everywhere
        return torch.cat([tiles.expand(-1, 300, -1, -1) - 10, tiles + 10], dim=1)

    many, _ = segment_tiled(many_classes, image[:20, :20], tiling=tiling)
    assert many.dtype == np.uint16 and (many == 300).all()


def test_tiling_record_is_json():
    tiling = Tiling(1024, overlap=0.5, batch_size=2)
    assert json.loads(json.dumps(tiling.as_dict())) == {
        "tile_size": 1024,
        "overlap": 0.5,
        "sigma_scale": 0.125,
        "batch_size": 2,
    }
    assert tiling.step == 512 and Tiling(4, overlap=0.9).step == 1


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: Tiling(TILE, overlap=1.0), "overlap"),
        (lambda: Tiling(TILE, overlap=-0.1), "overlap"),
        (lambda: Tiling(0), "tile_size"),
        (lambda: Tiling(TILE, sigma_scale=0), "sigma_scale"),
        (lambda: Tiling(TILE, batch_size=0), "batch_size"),
        (
            lambda: segment_tiled(
                ConvModel(), np.zeros((8, 8), np.float32), tiling=Tiling(TILE, overlap=0.25), scale=0
            ),
            "scale",
        ),
        (
            lambda: segment_tiled(
                ConvModel(), np.zeros((8, 8), np.float32), tiling=Tiling(TILE, overlap=0.25), scale=-1
            ),
            "scale",
        ),
        (
            lambda: segment_tiled(ConvModel(), np.zeros((2, 8, 8), np.float32), tiling=Tiling(TILE, overlap=0.25)),
            "image",
        ),
        (lambda: segment_tiled(lambda x: x, np.zeros((8, 8), np.float32), tiling=Tiling(TILE, overlap=0.25)), "model"),
        (lambda: needs_tiling((8, 8), float("nan"), TILE), "scale"),
    ],
)
def test_invalid_arguments_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()
