"""The tiling-agreement benchmark measures what it says: a pixel-wise model agrees everywhere whatever the grids, and
a model that looks at its whole tile agrees fully only where two grids share their tiles."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.tiling_agreement import tiling_agreement

CANVAS = 64


class _Model(nn.Module):
    """An image-in model on a 64-pixel canvas: class 1 where the intensity is above a threshold, else background.

    ``pixelwise``: the threshold is fixed (a pixel's label depends on that pixel alone); otherwise it is the tile's
    mean intensity, so that a pixel's label depends on the tile around it, as ScSAM's pooled class prompts make it.
    """

    canvas_size = CANVAS

    def __init__(self, pixelwise: bool) -> None:
        super().__init__()
        self.pixelwise = pixelwise
        self.preprocessing = SimpleNamespace(normalizer=lambda _: lambda a: a.astype(np.float32) / 255.0)

    def forward(self, x: torch.Tensor, fit_to_canvas: bool = True) -> torch.Tensor:
        assert not fit_to_canvas and x.shape[-1] <= CANVAS and x.shape[-2] <= CANVAS
        threshold = 0.5 if self.pixelwise else x.mean(dim=(-2, -1), keepdim=True)
        return torch.cat([torch.zeros_like(x), 20 * (x - threshold)], dim=1)


@pytest.mark.parametrize("offset", [32, 16])
def test_a_pixelwise_model_agrees_everywhere_with_any_offset(offset):
    result = tiling_agreement(_Model(pixelwise=True), 512, overlap=0.5, offset=offset, batch_size=16)
    assert result["agreement"] == 1.0 and result["classes_found"] == 2
    assert result["step"] == 32 and result["shared_tiles"] is (offset == 32)


def test_a_tile_context_model_disagrees_more_where_the_grids_cut_every_tile_differently():
    model = _Model(pixelwise=False)
    shared = tiling_agreement(model, 512, overlap=0.5, offset=32, batch_size=16)  # one step: the same inner tiles
    cut = tiling_agreement(model, 512, overlap=0.5, offset=16, batch_size=16)  # half a step: every tile differs
    assert shared["shared_tiles"] and not cut["shared_tiles"]
    assert cut["agreement"] < shared["agreement"] < 1.0, (cut, shared)
    # beyond the first tile row and column, grids sharing their tiles blend the same tiles: the same labels
    assert shared["interior_agreement"] == 1.0 and cut["interior_agreement"] < 0.99, (cut, shared)


def test_an_offset_outside_the_mosaic_is_refused():
    with pytest.raises(ValueError, match="offset must be in"):
        tiling_agreement(_Model(pixelwise=True), 256, offset=256 - 2 * CANVAS)
