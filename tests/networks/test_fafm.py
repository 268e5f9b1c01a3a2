"""Tests of scsam_monai.networks.fafm."""

from __future__ import annotations

import pytest
import torch

from scsam_monai.networks.fafm import FAFM, ConcatFusion, CrossAttentionFusion, SingleStream, build_fusion


def _inputs(b: int = 2, g: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(b, 256, g, g), torch.randn(b, 512, g, g)


@pytest.mark.parametrize("fusion", ["fafm", "concat", "cross_attention"])
def test_fusion_shapes_and_aligned_streams(fusion):
    sam, mae = _inputs()
    out = build_fusion(fusion, "both")(sam, mae)
    assert out.features.shape == (2, 256, 8, 8)
    assert out.aligned_sam.shape == out.aligned_mae.shape == (2, 256, 8, 8)


def test_build_fusion_types_and_errors():
    assert isinstance(build_fusion("fafm", "both"), FAFM)
    assert isinstance(build_fusion("concat", "both"), ConcatFusion)
    assert isinstance(build_fusion("cross_attention", "both"), CrossAttentionFusion)
    assert isinstance(build_fusion("fafm", "sam_only"), SingleStream)
    with pytest.raises(ValueError, match="fusion"):
        build_fusion("sum", "both")
    with pytest.raises(ValueError, match="streams"):
        build_fusion("fafm", "mae")


@pytest.mark.parametrize("stream", ["sam_only", "mae_only"])
def test_single_stream_uses_only_its_input(stream):
    sam, mae = _inputs()
    module = build_fusion("fafm", stream)
    out = module(sam if stream == "sam_only" else None, mae if stream == "mae_only" else None)
    assert out.features.shape == (2, 256, 8, 8)
    assert out.aligned_sam is None and out.aligned_mae is None
    with pytest.raises(ValueError):
        module(None, None)


def test_fafm_halves_come_from_fused_and_auxiliary_streams():
    """V_f's first N/2 channels depend on the MAE stream, the last N/2 (auxiliary SAM stream) do not."""
    sam, mae = _inputs(b=1)
    fafm = FAFM().eval()
    base = fafm(sam, mae).features
    changed = fafm(sam, mae + torch.randn_like(mae)).features
    assert not torch.allclose(base[:, :128], changed[:, :128])
    torch.testing.assert_close(base[:, 128:], changed[:, 128:])


def test_fafm_gradients_reach_both_aligners():
    sam, mae = _inputs(b=1)
    fafm = FAFM()
    fafm(sam, mae).features.square().mean().backward()
    assert fafm.align_sam[0].weight.grad.abs().sum() > 0
    assert fafm.align_mae[0].weight.grad.abs().sum() > 0


def test_fafm_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        FAFM(feature_dim=255)
