"""The paper's rule for classing zero-shot SAM masks, and painting them into a label map."""

from __future__ import annotations

import numpy as np
import pytest

from scsam_monai.baselines.zero_shot import assign_mask_classes, masks_to_label_map


def _mask(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


@pytest.fixture
def label() -> np.ndarray:
    label = np.zeros((40, 40), dtype=np.int64)
    label[0:10, 0:10] = 1  # nucleus, top left
    label[0:10, 30:40] = 2  # mitochondrion, top right
    label[30:40, 30:40] = 3  # granule, bottom right
    return label


def test_mask_takes_the_class_it_overlaps_most(label):
    # 20 pixels on class 1, 30 pixels on class 2: class 2 wins although class 1 comes first
    mask = _mask(label.shape, slice(0, 2), slice(0, 10)) | _mask(label.shape, slice(0, 3), slice(30, 40))
    assert assign_mask_classes([mask], label, 3) == [2]


def test_background_overlap_does_not_count(label):
    # mostly background, a few pixels of granule: the granule class
    mask = _mask(label.shape, slice(20, 32), slice(20, 32))
    assert assign_mask_classes([mask], label, 3) == [3]


def test_mask_overlapping_no_organelle_takes_the_nearest_class(label):
    near_nucleus = _mask(label.shape, slice(12, 14), slice(2, 4))  # 3 px below the nucleus
    near_granule = _mask(label.shape, slice(26, 28), slice(34, 36))  # 3 px above the granule
    assert assign_mask_classes([near_nucleus, near_granule], label, 3) == [1, 3]


def test_no_foreground_or_empty_mask_gives_background(label):
    empty = np.zeros_like(label, dtype=bool)
    assert assign_mask_classes([empty], label, 3) == [0]
    some = _mask(label.shape, slice(15, 20), slice(15, 20))
    assert assign_mask_classes([some], np.zeros_like(label), 3) == [0]


def test_mask_of_another_shape_is_refused(label):
    with pytest.raises(ValueError, match="differ in shape"):
        assign_mask_classes([np.ones((4, 4), dtype=bool)], label, 3)


def test_smaller_masks_are_painted_on_top():
    big = _mask((10, 10), slice(0, 10), slice(0, 10))
    small = _mask((10, 10), slice(2, 4), slice(2, 4))
    out = masks_to_label_map([small, big], [2, 1], (10, 10))
    assert out[3, 3] == 2 and out[8, 8] == 1
    dropped = masks_to_label_map([big], [0], (10, 10))
    assert not dropped.any()
