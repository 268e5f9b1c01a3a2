"""Tests of the resident pre-training data: crops cut from one tensor, symmetries, seeding, loading, epoch length."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, ScaleIntensityRanged

from scsam_monai.data.transforms import LoadEMImaged
from scsam_monai.mae.data import unlabelled_slices
from scsam_monai.mae.device_data import ResidentCropLoader, ResidentSlices, load_resident_slices, steps_per_epoch


def _symmetries(square: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of a square under flips and transposition."""
    out = []
    for t in (square, square.transpose(-1, -2)):
        out += [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
    return out


def _volume(slices: int, height: int, width: int) -> torch.Tensor:
    """Slices whose every pixel value is unique (slice, row and column can be read back from it)."""
    return torch.arange(slices * height * width, dtype=torch.float32).reshape(slices, height, width)


def test_crops_are_windows_of_the_slices():
    volume = _volume(3, 20, 30)
    resident = ResidentSlices(list(volume), crop_size=8, dtype=torch.float32)
    torch.manual_seed(0)
    crops = resident.crops(200, augment=False)
    assert crops.shape == (200, 1, 8, 8) and crops.dtype == torch.float32
    seen_slices, origins = set(), set()
    for crop in crops[:, 0]:
        s, rest = divmod(int(crop[0, 0]), 20 * 30)
        y, x = divmod(rest, 30)
        assert y + 8 <= 20 and x + 8 <= 30  # inside the slice
        torch.testing.assert_close(crop, volume[s, y : y + 8, x : x + 8])
        seen_slices.add(s)
        origins.add((y, x))
    assert seen_slices == {0, 1, 2} and len(origins) > 100  # every slice, many origins
    ys, xs = zip(*origins, strict=True)
    assert max(ys) == 12 and max(xs) == 22 and min(ys) == 0 and min(xs) == 0  # the full range of origins


def test_augmented_crops_take_each_of_the_8_symmetries():
    volume = _volume(1, 8, 8)
    resident = ResidentSlices(list(volume), crop_size=8, dtype=torch.float32)
    torch.manual_seed(1)
    crops = resident.crops(400)
    images = _symmetries(volume[0])
    counts = [sum(torch.equal(c[0], image) for c in crops) for image in images]
    assert sum(counts) == 400  # every crop is a symmetry of the one window
    assert min(counts) > 20, counts  # each of the 8 drawn (expected 50)


def test_slices_of_other_sizes_and_smaller_than_a_crop_are_padded_black():
    big, small = torch.full((12, 16), 0.5), torch.full((4, 6), 1.0)
    resident = ResidentSlices([big, small], crop_size=8, dtype=torch.float32)
    assert tuple(resident.volume.shape) == (2, 12, 16)
    torch.manual_seed(0)
    crops = resident.crops(100, augment=False)[:, 0]
    from_small = crops[crops.amax(dim=(-1, -2)) == 1.0]
    assert len(from_small) > 10
    for crop in from_small:  # origin (0, 0): the slice at the top left, black to the bottom/right
        assert (crop[:4, :6] == 1.0).all() and crop[4:].abs().sum() == 0 and crop[:, 6:].abs().sum() == 0
    assert ((crops == 0.5) | (crops.amax(dim=(-1, -2), keepdim=True) == 1.0)).all()  # big slice: never padding
    with pytest.raises(ValueError, match="2D slices"):
        ResidentSlices([torch.zeros(1, 4, 4)], crop_size=2)
    with pytest.raises(ValueError, match="at least one"):
        ResidentSlices([], crop_size=2)


def test_loader_draws_when_a_batch_is_asked_for_so_seeding_the_epoch_fixes_its_crops():
    resident = ResidentSlices(list(torch.rand(4, 32, 32)), crop_size=16)
    loader = ResidentCropLoader(resident, batch_size=5, steps=3)
    assert len(loader) == 3
    iterator = iter(loader)  # made before the epoch's seeding, as ignite does
    torch.manual_seed(7)
    first = [batch["image"] for batch in iterator]
    torch.manual_seed(7)
    again = [batch["image"] for batch in loader]
    assert len(first) == 3 and all(a.shape == (5, 1, 16, 16) for a in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    with pytest.raises(ValueError, match="positive"):
        ResidentCropLoader(resident, batch_size=0, steps=1)


def test_steps_per_epoch():
    assert steps_per_epoch(30, 8, 16) == 15  # the demo
    assert steps_per_epoch(3, 1, 256) == 1 and steps_per_epoch(2000, 4, 256) == 32
    with pytest.raises(ValueError, match="positive"):
        steps_per_epoch(0, 4, 16)


def test_loading_normalises_and_resizes_to_the_embedding_scale(tmp_path):
    volume = np.zeros((3, 40, 80), dtype=np.uint8)
    volume[:, :, 40:] = 255
    volume[2] = 51
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    items = unlabelled_slices(image_dir=tmp_path, select="0,2")
    assert [item["slice"] for item in items] == [0, 2]
    preprocessing = Compose(
        [
            LoadEMImaged(keys="image", slice_key="slice", container_key="key"),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
            ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=0, b_max=1, clip=True),
        ]
    )
    resident = load_resident_slices(items, preprocessing, crop_size=16, canvas=40)  # longest side 80 -> 40
    assert tuple(resident.volume.shape) == (2, 20, 40) and resident.volume.dtype == torch.float16
    assert resident.volume[0, :, :19].max() == 0 and resident.volume[0, :, 21:].min() == 1
    torch.testing.assert_close(resident.volume[1].float(), torch.full((20, 40), 0.2), atol=1e-3, rtol=0)
    as_is = load_resident_slices(items, preprocessing, crop_size=16, canvas=None, dtype=torch.float32)
    assert tuple(as_is.volume.shape) == (2, 40, 80) and as_is.nbytes == 2 * 40 * 80 * 4
    with pytest.raises(ValueError, match="beyond"):
        unlabelled_slices(image_dir=tmp_path, select="0:5")
