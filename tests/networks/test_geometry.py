"""Tests of scsam_monai.networks.geometry: SAM's resize-longest-side + pad canvas and its inverse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from scsam_monai.networks.geometry import (
    longest_side_size,
    pad_to_square,
    resize_longest,
    resize_longest_and_pad,
    unpad_and_resize,
)

SIZES = [(683, 1024), (1024, 683), (300, 517), (517, 300), (64, 64), (2000, 1333), (1, 7), (100, 101)]


def _ramp(h: int, w: int) -> torch.Tensor:
    """A linear ramp sampled at pixel centres of an h x w image: bilinear resampling reproduces it exactly."""
    y = torch.arange(h, dtype=torch.float64) + 0.5
    x = torch.arange(w, dtype=torch.float64) + 0.5
    return (y[:, None] / h + 2 * x[None, :] / w)[None, None]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("target", [1024, 256, 64])
def test_longest_side_size_matches_sam(size, target):
    assert longest_side_size(*size, target) == ResizeLongestSide.get_preprocess_shape(*size, target)
    assert max(longest_side_size(*size, target)) == target


def test_longest_side_size_rejects_non_positive():
    with pytest.raises(ValueError):
        longest_side_size(0, 10, 64)


@pytest.mark.parametrize("size", [(96, 160), (160, 96), (40, 30), (300, 200)])
def test_resize_longest_and_pad_shape_and_padding(size):
    x = torch.rand(2, 3, *size) + 1.0  # never equal to the pad value
    out = resize_longest_and_pad(x, 128, pad_value=-5.0)
    h, w = longest_side_size(*size, 128)
    assert out.shape == (2, 3, 128, 128)
    torch.testing.assert_close(out[..., :h, :w], resize_longest(x, 128))
    assert (out[..., h:, :] == -5.0).all() and (out[..., :, w:] == -5.0).all()
    assert (out[..., :h, :w] > 0.5).all()


def test_resize_longest_and_pad_upscales_small_images():
    x = torch.rand(1, 1, 20, 10)
    out = resize_longest_and_pad(x, 64)
    assert out.shape == (1, 1, 64, 64)
    assert out[..., :64, :32].std() > 0 and (out[..., :, 32:] == 0).all()


def test_resize_longest_antialiases_when_shrinking():
    checker = (torch.arange(256)[:, None] + torch.arange(256)[None, :]) % 2
    out = resize_longest(checker[None, None].float(), 64)
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=5e-3, rtol=0)  # without antialias: 0 or 1


@pytest.mark.parametrize("size", [(96, 160), (160, 96), (50, 31), (31, 50), (256, 256)])
def test_round_trip_on_the_canvas_grid(size):
    x = _ramp(*size)
    canvas = resize_longest_and_pad(x, 256)
    back = unpad_and_resize(canvas, longest_side_size(*size, 256), 256, size)
    assert back.shape == x.shape
    # the resized size is rounded to whole pixels (as in SAM), hence a tolerance of 0.1% of the ramp's range
    torch.testing.assert_close(back[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2], atol=3e-3, rtol=0)


@pytest.mark.parametrize("size", [(683, 1024), (1024, 683), (300, 517), (2000, 1333)])
def test_unpad_low_resolution_grid_stays_aligned(size):
    """Logits on a 256 grid for a 1024 canvas come back on the original pixels, as SAM's postprocess_masks."""
    h, w = longest_side_size(*size, 1024)
    yy = (torch.arange(1024, dtype=torch.float64) + 0.5) / h * size[0]
    xx = (torch.arange(1024, dtype=torch.float64) + 0.5) / w * size[1]
    low = F.avg_pool2d((yy[:, None] + 2 * xx[None, :])[None, None], 4)  # ramp in original pixel units
    out = unpad_and_resize(low, (h, w), 1024, size)
    truth = (torch.arange(size[0]) + 0.5)[:, None] + 2 * (torch.arange(size[1]) + 0.5)[None, :]
    assert out.shape == (1, 1, *size)
    torch.testing.assert_close(out[0, 0, 8:-8, 8:-8], truth[8:-8, 8:-8].double(), atol=1e-3, rtol=0)
    sam = F.interpolate(F.interpolate(low, (1024, 1024), mode="bilinear")[..., :h, :w], size, mode="bilinear")
    torch.testing.assert_close(out[..., 8:-8, 8:-8], sam[..., 8:-8, 8:-8], atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", [(48, 80), (80, 48), (30, 17)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.int32])
def test_label_maps_stay_integer_valued(size, dtype):
    labels = torch.randint(0, 5, (2, 1, *size), dtype=dtype)
    canvas = resize_longest_and_pad(labels, 128, mode="nearest-exact", pad_value=0)
    assert canvas.dtype == dtype and canvas.shape == (2, 1, 128, 128)
    assert set(canvas.unique().tolist()) <= set(range(5))
    back = unpad_and_resize(canvas, longest_side_size(*size, 128), 128, size, mode="nearest-exact")
    assert back.dtype == dtype
    assert torch.equal(back, labels)  # exact when the canvas upscales


def test_label_map_on_low_resolution_grid():
    labels = torch.zeros(1, 1, 100, 150, dtype=torch.int64)
    labels[..., 50:, 75:] = 3
    canvas = resize_longest_and_pad(labels, 256, mode="nearest")
    low = canvas[..., ::4, ::4]
    back = unpad_and_resize(low, longest_side_size(100, 150, 256), 256, (100, 150), mode="nearest-exact")
    assert back.dtype == torch.int64 and set(back.unique().tolist()) == {0, 3}
    assert (back[..., :45, :] == 0).all() and (back[..., 55:, 80:] == 3).all()


def test_pad_to_square_and_errors():
    x = torch.ones(1, 2, 3, 4)
    assert pad_to_square(x, 4).sum() == 24 and pad_to_square(x, 4).shape == (1, 2, 4, 4)
    with pytest.raises(ValueError):
        pad_to_square(x, 3)
    with pytest.raises(ValueError):
        resize_longest(torch.ones(3, 4, 4), 8)
    with pytest.raises(ValueError):
        resize_longest(x, 8, mode="linear")
    with pytest.raises(ValueError):
        unpad_and_resize(torch.ones(1, 1, 8, 8), (9, 4), 8, (9, 4))
