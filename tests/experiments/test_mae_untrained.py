"""Tests of the step-0 MAE export (experiments.mae_untrained): the control between the random twin and pre-training."""

from __future__ import annotations

import torch

from experiments.mae_untrained import export_untrained_encoder, main, untrained_mae
from scsam_monai.mae.model import sincos_pos_embed_2d
from scsam_monai.networks.encoders import FrozenMaeEncoder
from tests.helpers import tiny_encoder


def test_export_is_the_untrained_mae_and_loads_in_the_frozen_encoder(tmp_path):
    path = export_untrained_encoder(tmp_path / "mae_untrained.pt", "tiny", seed=3)
    start = untrained_mae("tiny", seed=3).encoder.state_dict()
    record = torch.load(path, weights_only=True)
    assert record["mae_architecture"]["steps"] == 0 and record["mae_architecture"]["seed"] == 3
    for key, value in start.items():  # exactly the untrained MAE's weights
        torch.testing.assert_close(record["state_dict"][key], value, rtol=0, atol=0)

    encoder = FrozenMaeEncoder(arch="tiny", checkpoint=path)
    # MAE's fixed sin-cos position code, not timm's random initialisation of the random twin
    torch.testing.assert_close(encoder.backbone.pos_embed[0, 1:], sincos_pos_embed_2d(512, 16, 16))
    twin = tiny_encoder("mae", seed=3)
    assert twin.backbone.pos_embed[0, 1:].abs().max() < 0.5  # timm's trunc_normal(0.02) init
    # the twin and the step-0 encoder share every weight but the position code (same seed, same build)
    for key, value in twin.backbone.state_dict().items():
        if key != "pos_embed":
            torch.testing.assert_close(encoder.backbone.state_dict()[key], value, rtol=0, atol=0)
    images = torch.rand(1, 1, 256, 256)
    assert not torch.allclose(encoder(images), twin(images))


def test_seeds_differ_and_global_rng_is_untouched(tmp_path):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    a = untrained_mae("tiny", seed=0).encoder.blocks[0].attn.qkv.weight
    assert torch.equal(torch.rand(3), expected)
    b = untrained_mae("tiny", seed=1).encoder.blocks[0].attn.qkv.weight
    assert not torch.equal(a, b)
    assert main(["--arch", "tiny", "--seed", "1", "--out", str(tmp_path / "m.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]["blocks.0.attn.qkv.weight"], b)
