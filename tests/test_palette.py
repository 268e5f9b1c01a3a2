"""Tests of the one class palette (``scsam_monai.palette``) that every overlay uses."""

from __future__ import annotations

import numpy as np
import pytest

from scsam_monai.data.normalize import normalize_slice
from scsam_monai.palette import CLASS_COLOURS, class_colour, colourise, display_image, overlay_rgb8


def test_class_colours_are_fixed_per_label_value_and_repeat():
    np.testing.assert_allclose(class_colour(1), [0.12, 0.47, 0.71])  # nucleus blue
    np.testing.assert_allclose(class_colour(2), [0.89, 0.10, 0.11])  # mitochondria red
    np.testing.assert_allclose(class_colour(3), [1.00, 0.80, 0.00])  # granules yellow
    np.testing.assert_array_equal(class_colour(len(CLASS_COLOURS) + 1), class_colour(1))
    with pytest.raises(ValueError, match="0 is background"):
        class_colour(0)


def test_display_image_is_the_per_image_normalisation_clipped():
    image = np.random.default_rng(0).gamma(2.0, 300.0, (20, 30)).astype(np.uint16)
    np.testing.assert_array_equal(display_image(image), normalize_slice(image))
    almost_flat = np.full((100, 100), 50, np.uint8)
    almost_flat[0, 0] = 100  # the percentiles coincide: the per-image rule (MONAI's) leaves it unscaled
    assert normalize_slice(almost_flat).max() == 50.0 and display_image(almost_flat).max() == 1.0


def test_colourise_blends_each_class_and_leaves_background_grey():
    image = np.tile(np.arange(8, dtype=np.uint8) * 30, (6, 1))
    label = np.zeros((6, 8), np.int64)
    label[1, 1], label[2, 2], label[3, 3] = 1, 2, 7
    rgb = colourise(image, label, alpha=0.4)
    grey = display_image(image)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb[0], np.repeat(grey[0][:, None], 3, axis=1))
    for y, x, k in ((1, 1, 1), (2, 2, 2), (3, 3, 7)):
        np.testing.assert_allclose(rgb[y, x], 0.6 * grey[y, x] + 0.4 * class_colour(k), rtol=1e-6)
    with pytest.raises(ValueError, match="differ in size"):
        colourise(image, label[:, :4])


def test_overlay_rgb8_puts_the_grey_slice_beside_the_coloured_one():
    image = np.random.default_rng(1).integers(0, 4096, (10, 7)).astype(np.uint16)
    label = np.zeros((10, 7), np.uint8)
    label[4:8, 2:5] = 2
    out = overlay_rgb8(image, label)
    assert out.shape == (10, 14, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :7, 0], np.round(display_image(image) * 255))
    np.testing.assert_array_equal(out[:, 7:], np.round(colourise(image, label) * 255))
