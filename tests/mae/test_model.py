"""Tests of the MAE pre-training model: patches, masking, the encoder path, the loss and the encoder export."""

from __future__ import annotations

import pytest
import torch

from scsam_monai.mae.model import (
    MaskedAutoencoder,
    MaskedPatchLoss,
    patchify,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)
from scsam_monai.networks.encoders import FrozenMaeEncoder


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return MaskedAutoencoder(arch="tiny")


def test_patchify_is_row_major_and_inverted_by_unpatchify():
    x = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(2, 1, 8, 12)
    patches = patchify(x, 4)
    assert patches.shape == (2, 6, 16)
    torch.testing.assert_close(patches[0, 1], x[0, 0, :4, 4:8].reshape(-1))  # second patch: top row, middle
    torch.testing.assert_close(patches[1, 3], x[1, 0, 4:8, :4].reshape(-1))  # fourth: second row, left
    torch.testing.assert_close(unpatchify(patches, 4, 8, 12), x)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 1, 10, 8), 4)


def test_random_masking_keeps_the_requested_fraction_per_sample():
    generator = torch.Generator().manual_seed(3)
    ids_keep, mask = random_masking(5, 256, 0.5, generator=generator)
    assert ids_keep.shape == (5, 128) and mask.shape == (5, 256)
    assert (mask.sum(dim=1) == 128).all()
    for b in range(5):
        assert (mask[b, ids_keep[b]] == 0).all()  # the kept patches are exactly the unmasked ones
    assert not torch.equal(ids_keep[0].sort().values, ids_keep[1].sort().values)  # each sample its own mask
    again, _ = random_masking(5, 256, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, ids_keep)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 16, 1.0)


def test_sincos_position_embedding():
    emb = sincos_pos_embed_2d(16, 3, 5)
    assert emb.shape == (15, 16)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert len({tuple(row.tolist()) for row in emb}) == 15  # every position distinct


def test_forward_shapes_and_loss(mae):
    out = mae(torch.rand(3, 1, 64, 64))
    assert out["pred"].shape == out["target"].shape == (3, 256, 16) and out["mask"].shape == (3, 256)
    assert (out["mask"].sum(dim=1) == 128).all()  # ScSAM's mask ratio 0.5
    target = out["target"]
    torch.testing.assert_close(target.mean(dim=-1), torch.zeros(3, 256), atol=1e-5, rtol=0)  # norm_pix_loss
    loss = MaskedPatchLoss()(out["pred"], target, out["mask"])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert mae.encoder.pos_embed.grad is None and not mae.encoder.pos_embed.requires_grad  # fixed sin-cos
    mae.zero_grad(set_to_none=True)


@pytest.mark.parametrize("norm_pix_loss", [True, False, "mean"])
def test_pixel_targets(norm_pix_loss):
    torch.manual_seed(0)
    model = MaskedAutoencoder(arch="tiny", norm_pix_loss=norm_pix_loss)
    x = torch.rand(2, 1, 64, 64)
    x[0, 0, :4, :4] = torch.linspace(0.2, 0.8, 16).reshape(4, 4)  # the first patch: a ramp, spread known
    patches = patchify(model.normalize(x), 4)
    target = model.targets(model.normalize(x))
    if norm_pix_loss is False:  # the normalised intensities
        torch.testing.assert_close(target, patches)
    elif norm_pix_loss == "mean":  # each patch minus its mean: brightness removed, contrast kept
        torch.testing.assert_close(target, patches - patches.mean(dim=-1, keepdim=True))
        torch.testing.assert_close(target.std(dim=-1), patches.std(dim=-1))
    else:  # MAE: each patch normalised to mean 0, standard deviation 1
        torch.testing.assert_close(target.mean(dim=-1), torch.zeros(2, 256), atol=1e-5, rtol=0)
        torch.testing.assert_close(target.std(dim=-1), torch.ones(2, 256), atol=1e-3, rtol=0)
    assert model.encoder_record()["norm_pix_loss"] == norm_pix_loss
    # the reconstruction puts the original patches' mean (and spread) back: an exact prediction of the targets
    # gives the original image
    out = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    model.forward_decoder = lambda latent, ids_keep, grid: target  # a perfect decoder
    perfect = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(perfect["reconstruction"], x, atol=1e-4, rtol=0)
    assert not torch.allclose(out["reconstruction"], x, atol=1e-2)


def test_loss_counts_masked_patches_only():
    pred, target = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert MaskedPatchLoss()(pred, target, mask).item() == pytest.approx(1.0)
    pred[0, 1] = 100.0  # a visible patch: no effect
    assert MaskedPatchLoss()(pred, target, mask).item() == pytest.approx(1.0)


def test_visible_patch_encoding_is_the_frozen_encoders_path(mae):
    """With every patch visible, in order, the MAE's encoder path equals the frozen encoder's forward_features."""
    x = torch.rand(2, 1, 64, 64)
    normalized = mae.normalize(x)
    all_visible = torch.arange(256).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            mae.forward_encoder(normalized, all_visible), mae.encoder.forward_features(normalized)
        )


def test_reconstruction_keeps_visible_patches(mae):
    x = torch.rand(2, 1, 64, 64)
    out = mae.reconstruct(x, generator=torch.Generator().manual_seed(0))
    visible = out["mask"] == 0
    torch.testing.assert_close(out["reconstruction"][visible], x[visible])
    assert (out["masked"][~visible] == 0).all()
    assert out["mask"].mean().item() == pytest.approx(0.5)


def test_parameter_groups_decay_matrices_only(mae):
    decay, no_decay = mae.parameter_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    ids = {id(p) for g in (decay, no_decay) for p in g["params"]}
    assert id(mae.mask_token) in {id(p) for p in no_decay["params"]}
    assert id(mae.encoder.pos_embed) not in ids
    assert ids == {id(p) for p in mae.parameters() if p.requires_grad}


def test_saved_encoder_loads_into_the_frozen_encoder(mae, tmp_path):
    path = mae.save_encoder(tmp_path / "models" / "mae_encoder.pth", epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["mae_architecture"]["arch"] == "tiny" and raw["mae_architecture"]["epoch"] == 3
    assert not any(k.startswith("decoder") for k in raw["state_dict"])
    enc = FrozenMaeEncoder(arch="tiny", checkpoint=path)
    for k, v in mae.encoder.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[k], v), k
    assert list(tmp_path.joinpath("models").iterdir()) == [path]  # atomic: no temporary file left


def test_invalid_settings():
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAutoencoder(arch="tiny", mask_ratio=0.0)
    with pytest.raises(ValueError, match="unknown MAE arch"):
        MaskedAutoencoder(arch="vit_x")
    with pytest.raises(ValueError, match="norm_pix_loss"):
        MaskedAutoencoder(arch="tiny", norm_pix_loss="std")
    # `--norm_pix_loss true` on monai.bundle's command line arrives as the text "true": refused with the fix
    with pytest.raises(ValueError, match="write --norm_pix_loss True"):
        MaskedAutoencoder(arch="tiny", norm_pix_loss="true")
    with pytest.raises(ValueError, match="decoder_embed_dim"):
        MaskedAutoencoder(arch="tiny", decoder_embed_dim=130)
    with pytest.raises(ValueError, match="one-channel"):
        MaskedAutoencoder(arch="tiny")(torch.rand(1, 3, 64, 64))
