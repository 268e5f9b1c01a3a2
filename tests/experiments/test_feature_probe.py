"""Tests of the linear feature probes (``experiments.feature_probe``) on a small prepared datalist."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch
import torch.nn as nn
import torch.nn.functional as F

from experiments import feature_probe
from experiments.feature_probe import (
    fit_ridge,
    image_dependent_variance,
    patch_class_fractions,
    patch_pixels,
    probe_encoder,
    read_prepared_split,
    run_probe,
)
from experiments.mae_untrained import export_untrained_encoder
from tests.helpers import tiny_encoder

SIZE, GRID = 64, 16  # 4-pixel patches, like the tiny encoders on their canvas


class _PatchPixels(nn.Module):
    """An encoder whose features are each token's pixels and their squares: everything about the image, and the
    three intensity levels of :func:`_slice` apart (a quadratic separates them; a line cannot)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patch = images.shape[-1] // GRID
        pixels = F.unfold(images, patch, stride=patch).view(len(images), patch * patch, GRID, GRID)
        return torch.cat([pixels, pixels**2], dim=1)


class _Noise(nn.Module):
    """An encoder whose features ignore the image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(images), 16, GRID, GRID, generator=torch.Generator().manual_seed(len(images)))


def _slice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares (class 1) and dark bars (class 2) on noisy grey, on the 4-pixel patch grid."""
    image = rng.normal(128, 10, (SIZE, SIZE))
    label = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(3):
        r, c = rng.integers(0, SIZE - 16, 2) // 4 * 4
        image[r : r + 12, c : c + 12] = 230
        label[r : r + 12, c : c + 12] = 1
    r = rng.integers(0, SIZE - 8) // 4 * 4
    image[r : r + 4, :] = 20
    label[r : r + 4, :] = 2
    return np.clip(image, 0, 255).astype(np.uint8), label


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("probe_data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    data = {"labels": {"0": "background", "1": "squares", "2": "bars"}, "training": [], "test": []}
    for split, count in (("training", 6), ("test", 3)):
        for i in range(count):
            image, label = _slice(rng)
            name = f"{split}_{i}.tif"
            tifffile.imwrite(root / "images" / name, image)
            tifffile.imwrite(root / "labels" / name, label)
            data[split].append({"image": f"images/{name}", "label": f"labels/{name}"})
    path = root / "datalist.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_patch_targets_are_fractions_and_pixels_of_each_token():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 1
    labels[0, 0, 4] = 2  # one pixel of class 2 in the top-right patch
    fractions = patch_class_fractions(labels, num_classes=2, grid=2)
    assert fractions.shape == (4, 3)
    torch.testing.assert_close(fractions.sum(1), torch.ones(4))
    torch.testing.assert_close(fractions[0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(fractions[1], torch.tensor([15 / 16, 0.0, 1 / 16]))
    images = torch.arange(64.0).view(1, 1, 8, 8)
    assert patch_pixels(images, grid=2)[1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]
    with pytest.raises(ValueError, match="token grid"):
        patch_class_fractions(torch.zeros(1, 9, 9, dtype=torch.long), num_classes=2, grid=2)


def test_ridge_recovers_a_linear_map_with_its_intercept():
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    weights, bias = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([3.0, -1.0])
    predict = fit_ridge(x, x @ weights + bias, alpha=1e-9)
    torch.testing.assert_close(predict(x[:5]), x[:5] @ weights + bias, rtol=1e-4, atol=1e-4)


def test_read_prepared_split_scales_uint8_and_names_a_bad_split(datalist):
    images, labels = read_prepared_split(datalist, "training")
    assert images.shape == (6, 1, SIZE, SIZE) and labels.shape == (6, SIZE, SIZE)
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
    assert set(labels.unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match=r"datalist.json.*'validation'"):
        read_prepared_split(datalist, "validation")


def test_probe_tells_informative_features_from_noise(datalist):
    train, test = read_prepared_split(datalist, "training"), read_prepared_split(datalist, "test")
    pixels = probe_encoder(_PatchPixels(), train, test, num_classes=2)
    noise = probe_encoder(_Noise(), train, test, num_classes=2)
    assert pixels["grid"] == GRID and pixels["channels"] == 32
    assert pixels["pixel_r2"] > 0.999  # the features are the pixels
    assert min(pixels["dice"]) > 0.8  # squares and bars are linear in their pixels
    assert noise["pixel_r2"] < 0.1 and noise["dice_mean"] < 0.5
    assert noise["participation_ratio"] > 12  # 16 independent channels: variance spread over nearly all
    assert 0 < pixels["first_component_share"] < 1 and pixels["participation_ratio"] < 8  # correlated pixels


class _FixedPattern(nn.Module):
    """Each token's pixels plus a position code ten times their size that is the same in every image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = _PatchPixels()(images)[:, :16]
        code = torch.randn(16, GRID, GRID, generator=torch.Generator().manual_seed(0))
        return pixels + 10.0 * code


def test_probe_measures_the_fixed_pattern_share(datalist):
    train, test = read_prepared_split(datalist, "training"), read_prepared_split(datalist, "test")
    fixed = probe_encoder(_FixedPattern(), train, test, num_classes=2)["fixed_pattern_share"]
    noise = probe_encoder(_Noise(), train, test, num_classes=2)["fixed_pattern_share"]
    pixels = probe_encoder(_PatchPixels(), train, test, num_classes=2)["fixed_pattern_share"]
    assert fixed > 0.95  # the code's variance (100 per channel) dwarfs the pixels' (< 0.1)
    assert noise < 0.3  # independent noise per image: each position's mean over 6 images holds about 1/6
    assert pixels < 0.5  # random squares and bars: no position is the same in every image


def test_image_dependent_variance_ignores_a_fixed_pattern_and_follows_scale():
    generator = torch.Generator().manual_seed(1)
    varying = torch.randn(6, 50, 8, generator=generator, dtype=torch.float64)
    pattern = 10.0 * torch.randn(1, 50, 8, generator=generator, dtype=torch.float64)
    base = image_dependent_variance(varying)
    assert base == pytest.approx(float(varying.double().var(dim=0, unbiased=False).mean()))
    assert image_dependent_variance(varying + pattern) == pytest.approx(base, rel=1e-9)  # the pattern adds nothing
    assert image_dependent_variance(3.0 * varying) == pytest.approx(9.0 * base, rel=1e-9)
    assert image_dependent_variance(pattern.expand(6, -1, -1)) == pytest.approx(0.0, abs=1e-12)


def test_run_probe_writes_json_and_markdown_for_real_encoders(datalist, tmp_path):
    encoders = {
        "MAE (random, seed 0)": lambda: tiny_encoder("mae", seed=0),
        "pixels": _PatchPixels,
    }
    result = run_probe(datalist, encoders, tmp_path, class_names=["squares", "bars"])
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["train_slices"] == 6 and saved["test_slices"] == 3
    mae = saved["encoders"]["MAE (random, seed 0)"]
    assert mae["channels"] == 512 and mae["grid"] == 64  # the tiny MAE's grid on its 256 canvas
    assert all(0.0 <= d <= 1.0 for d in mae["dice"]) and not math.isnan(mae["pixel_r2"])
    table = (tmp_path / "probe.md").read_text()
    assert "| MAE (random, seed 0) | 512 |" in table and "dice_squares" in table and "fixed_pattern_share" in table
    assert 0.0 <= mae["fixed_pattern_share"] <= 1.0
    assert mae["image_dependent_variance"] > 0 and "image_dependent_variance" in table


def test_command_line_probes_the_pretrained_mae_and_its_random_twins(datalist, tmp_path, capsys):
    source = tiny_encoder("mae", seed=7)  # stands in for a pre-trained MAE
    checkpoint = tmp_path / "mae_encoder.pth"
    torch.save({"model": {f"encoder.{k}": v for k, v in source.backbone.state_dict().items()}}, checkpoint)
    code = feature_probe.main(
        ["--datalist", datalist, "--mae-checkpoint", str(checkpoint), "--random-seeds", "0", "--out", str(tmp_path)]
    )
    assert code == 0
    rows = json.loads((tmp_path / "probe.json").read_text())["encoders"]
    assert list(rows) == ["MAE (pre-trained)", "MAE (random, seed 0)", "SAM (random, seed 0)"]
    assert json.loads((tmp_path / "probe.json").read_text())["class_names"] == ["squares", "bars"]
    assert "MAE (pre-trained)" in capsys.readouterr().out


def test_command_line_probes_further_mae_files_and_names_a_bad_one(datalist, tmp_path, capsys):
    untrained = export_untrained_encoder(tmp_path / "untrained.pt", "tiny", seed=0)
    code = feature_probe.main(
        [
            "--datalist",
            datalist,
            "--mae-checkpoint",
            str(untrained),
            "--extra-mae",
            f"MAE (step 0)={untrained}",
            "--random-seeds",
            "0",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "out" / "probe.json").read_text())["encoders"]
    assert list(rows) == ["MAE (pre-trained)", "MAE (step 0)", "MAE (random, seed 0)", "SAM (random, seed 0)"]
    assert rows["MAE (step 0)"] == rows["MAE (pre-trained)"]  # the same file probes the same
    for bad, message in ((f"x={tmp_path / 'missing.pt'}", "no file"), ("no-equals-sign", "NAME=PATH")):
        with pytest.raises(SystemExit):
            feature_probe.main(
                [
                    "--datalist",
                    datalist,
                    "--mae-checkpoint",
                    str(untrained),
                    "--extra-mae",
                    bad,
                    "--out",
                    str(tmp_path / "bad"),
                ]
            )
        assert message in capsys.readouterr().err
