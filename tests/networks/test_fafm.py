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


def _small(module_type, **kwargs):
    torch.manual_seed(0)
    return module_type(sam_channels=6, mae_channels=10, feature_dim=8, **kwargs).eval()


def _small_inputs(g: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 6, g, g, generator=generator), torch.randn(2, 10, g, g, generator=generator)


def test_concat_fusion_is_a_1x1_projection_of_both_aligned_streams():
    """V_f = W [align_sam(sam); align_mae(mae)] + b at every position: both streams count, positions stay apart."""
    fusion = _small(ConcatFusion)
    sam, mae = _small_inputs()
    with torch.no_grad():
        out = fusion(sam, mae)
        a_sam, a_mae = fusion.align_sam(sam), fusion.align_mae(mae)
    torch.testing.assert_close(out.aligned_sam, a_sam)
    torch.testing.assert_close(out.aligned_mae, a_mae)
    weight, bias = fusion.project.weight[:, :, 0, 0].detach(), fusion.project.bias.detach()
    expected = torch.einsum("oc,bchw->bohw", weight[:, :8], a_sam) + torch.einsum("oc,bchw->bohw", weight[:, 8:], a_mae)
    torch.testing.assert_close(out.features, expected + bias[None, :, None, None])
    # each input changes the output, and only at the position where it changed
    for index in (0, 1):
        changed = [sam.clone(), mae.clone()]
        changed[index][:, :, 1, 2] += 3.0
        with torch.no_grad():
            diff = (fusion(*changed).features - out.features).abs().amax(dim=(0, 1))
        assert diff[1, 2] > 1e-3 and diff.sum() == diff[1, 2], diff


def _attention_by_hand(fusion: CrossAttentionFusion, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of ``query`` (B, L, N) over ``kv`` (B, S, N) written out from the module's weights."""
    attention = fusion.attention
    n, heads = query.shape[-1], attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.split(n)
    b_q, b_k, b_v = attention.in_proj_bias.split(n)

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, N) -> (B, heads, L, N / heads)
        return x.unflatten(-1, (heads, n // heads)).transpose(1, 2)

    q, k, v = split(query @ w_q.T + b_q), split(kv @ w_k.T + b_k), split(kv @ w_v.T + b_v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (n // heads) ** 0.5, dim=-1)
    merged = (weights @ v).transpose(1, 2).flatten(2)
    return merged @ attention.out_proj.weight.T + attention.out_proj.bias


def test_cross_attention_sam_positions_attend_to_the_pooled_mae_tokens():
    """V_f = LayerNorm(q + MHA(q, pool(a_mae))) with q the aligned SAM features at every position."""
    fusion = _small(CrossAttentionFusion, num_heads=2, kv_grid=2)
    sam, mae = _small_inputs()
    with torch.no_grad():
        out = fusion(sam, mae)
        query = fusion.align_sam(sam).flatten(2).transpose(1, 2)  # (B, 16, N)
        pooled = torch.nn.functional.avg_pool2d(fusion.align_mae(mae), 2).flatten(2).transpose(1, 2)  # (B, 4, N)
        attended = _attention_by_hand(fusion, query, pooled)
    expected = torch.nn.functional.layer_norm(query + attended, (8,), fusion.norm.weight, fusion.norm.bias)
    torch.testing.assert_close(out.features, expected.transpose(1, 2).reshape(2, 8, 4, 4), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.features, fusion.norm(query).transpose(1, 2).reshape(2, 8, 4, 4), atol=1e-3)


def test_cross_attention_mixes_the_whole_mae_stream_and_ignores_the_order_of_its_tokens():
    fusion = _small(CrossAttentionFusion, num_heads=2, kv_grid=2)
    sam, mae = _small_inputs()
    with torch.no_grad():
        out = fusion(sam, mae).features
        # a change of the MAE stream in one pooled cell reaches every SAM position (global attention)
        one_cell = mae.clone()
        one_cell[:, :, :2, :2] += 2.0
        diff = (fusion(sam, one_cell).features - out).abs().amax(dim=(0, 1))
        assert (diff > 1e-4).all(), diff
        # no positions on the keys: moving whole pooled cells of the MAE stream changes nothing
        torch.testing.assert_close(fusion(sam, mae.roll(shifts=(2, 2), dims=(2, 3))).features, out)
        # the queries keep their positions: moving the SAM stream moves the output with it
        moved = fusion(sam.roll(shifts=1, dims=3), mae).features
        torch.testing.assert_close(moved, out.roll(shifts=1, dims=3))
