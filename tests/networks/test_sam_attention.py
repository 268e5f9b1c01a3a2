"""Tests of the fused SAM ViT attention against segment-anything's own ``ImageEncoderViT`` (small, random weights)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

from scsam_monai.networks import sam_attention
from scsam_monai.networks.sam_attention import (
    FusedSamAttention,
    chunked_rel_pos_attention,
    decomposed_rel_pos_bias,
    decomposed_rel_pos_terms,
    reference_copy,
    sam_attention_kind,
    set_sam_attention,
)

# 16 x 16 token grid; windows of 5 need padding to 20 (window_partition's padded path); block 1 is global
GRID, WINDOW = 16, 5


def _encoder(seed: int = 0) -> ImageEncoderViT:
    """segment-anything's real ImageEncoderViT, tiny, with every weight random (rel-pos tables too: SAM inits 0)."""
    torch.manual_seed(seed)
    enc = ImageEncoderViT(
        img_size=4 * GRID,
        patch_size=4,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=2.0,
        out_chans=32,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=WINDOW,
        global_attn_indexes=(1,),
    )
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.5)
    return enc.eval()


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 4 * GRID, 4 * GRID, generator=torch.Generator().manual_seed(1))


def test_bias_equals_segment_anythings_decomposed_rel_pos():
    torch.manual_seed(0)
    q = torch.randn(6, 7 * 5, 8)  # (B * heads, q_h * q_w, C)
    rel_h, rel_w = torch.randn(2 * 7 - 1, 8), torch.randn(2 * 5 - 1, 8)
    expected = add_decomposed_rel_pos(torch.zeros(6, 35, 35), q, rel_h, rel_w, (7, 5), (7, 5))
    bias = decomposed_rel_pos_bias(q.view(2, 3, 35, 8), rel_h, rel_w, (7, 5), (7, 5))
    assert bias.shape == (2, 3, 35, 35)
    torch.testing.assert_close(bias.reshape(6, 35, 35), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [0, 1], ids=["windowed", "global"])
def test_fused_block_attention_equals_reference_in_fp32(block):
    enc = _encoder()
    attn = enc.blocks[block].attn
    size = GRID if block == 1 else WINDOW
    assert attn.rel_pos_h.shape[0] == 2 * size - 1  # the block type is the one named
    x = torch.randn(3, size, size, 48)
    fused = FusedSamAttention(attn)
    with torch.no_grad():
        assert _rel_l2(fused(x), attn(x)) < 1e-5


def _qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, heads, H * W, C) as segment-anything's Attention splits them (strided views, as in the model)."""
    b, h, w, _ = x.shape
    return attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


@pytest.mark.parametrize("rows", [100, 256, 1000], ids=["uneven_chunks", "one_chunk", "more_rows_than_queries"])
def test_chunked_attention_equals_reference_in_fp32(rows):
    attn = _encoder().blocks[1].attn  # the global block
    x = torch.randn(3, GRID, GRID, 48)  # batch 3: 100 rows -> chunks of 33 queries, the last one short
    q, k, v = _qkv(attn, x)
    with torch.no_grad():
        rel_h, rel_w = decomposed_rel_pos_terms(q, attn.rel_pos_h, attn.rel_pos_w, (GRID, GRID), (GRID, GRID))
        out = chunked_rel_pos_attention(q, k, v, rel_h, rel_w, attn.scale, rows=rows)
        out = attn.proj(out.transpose(1, 2).reshape(3, GRID, GRID, -1))
        assert _rel_l2(out, attn(x)) < 1e-5


def test_chunked_attention_in_bf16_keeps_the_softmax_in_float32():
    attn = _encoder().blocks[1].attn
    x = torch.randn(2, GRID, GRID, 48)
    with torch.no_grad():
        expected = attn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = _qkv(attn, x)
            rel_h, rel_w = decomposed_rel_pos_terms(q, attn.rel_pos_h, attn.rel_pos_w, (GRID, GRID), (GRID, GRID))
            out = chunked_rel_pos_attention(q, k, v, rel_h, rel_w, attn.scale, rows=64)
            assert out.dtype == torch.bfloat16
            out = attn.proj(out.transpose(1, 2).reshape(2, GRID, GRID, -1))
    assert 0 < _rel_l2(out, expected) < 0.02


def test_fused_attention_chunks_only_when_compiling_on_cpu_a_large_grid(monkeypatch):
    """The chunked path pays under Inductor on CPUs only: eager calls and small grids keep SDPA."""
    calls = []
    chunked = sam_attention.chunked_rel_pos_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return chunked(*args, **kwargs)

    monkeypatch.setattr(sam_attention, "chunked_rel_pos_attention", spy)
    attn = _encoder().blocks[1].attn
    fused = FusedSamAttention(attn)
    x = torch.randn(1, GRID, GRID, 48)
    with torch.no_grad():
        expected = attn(x)
        assert _rel_l2(fused(x), expected) < 1e-5 and not calls  # eager: SDPA
        monkeypatch.setattr(sam_attention, "CHUNKED_ATTENTION_MIN_TOKENS", GRID * GRID + 1)
        torch._dynamo.reset()
        assert _rel_l2(torch.compile(fused, backend="eager")(x), expected) < 1e-5 and not calls  # grid too small
        monkeypatch.setattr(sam_attention, "CHUNKED_ATTENTION_MIN_TOKENS", GRID * GRID)
        torch._dynamo.reset()
        assert _rel_l2(torch.compile(fused, backend="eager")(x), expected) < 1e-5
    torch._dynamo.reset()
    assert calls and calls[0][2] == GRID * GRID  # traced through the chunked path


@pytest.mark.parametrize("bias", [True, False], ids=["rel_pos", "no_rel_pos"])
def test_fused_attention_without_rel_pos_and_back_to_reference(bias):
    torch.manual_seed(0)
    ref = Attention(24, num_heads=4, qkv_bias=bias, use_rel_pos=bias, input_size=(6, 6) if bias else None).eval()
    fused = FusedSamAttention(ref)
    back = fused.to_reference()
    assert isinstance(back, Attention) and back.qkv is ref.qkv and back.proj is ref.proj
    x = torch.randn(2, 6, 6, 24)
    with torch.no_grad():
        expected = ref(x)
        assert _rel_l2(fused(x), expected) < 1e-5
        assert torch.equal(back(x), expected)
    with pytest.raises(TypeError, match="Attention"):
        FusedSamAttention(nn.Linear(2, 2))


def test_fused_encoder_equals_segment_anything_in_fp32(images):
    enc = _encoder()
    with torch.no_grad():
        expected = enc(images)
        set_sam_attention(enc, "fused")
        assert sam_attention_kind(enc) == "fused"
        fused = enc(images)
        set_sam_attention(enc, "reference")
        assert sam_attention_kind(enc) == "reference"
        again = enc(images)
    assert _rel_l2(fused, expected) < 1e-5
    assert torch.equal(again, expected)  # the reference path is segment-anything's, bit for bit


def test_fused_encoder_in_bf16_autocast_is_within_two_percent(images):
    enc = _encoder()
    with torch.no_grad():
        expected = enc(images)
        set_sam_attention(enc, "fused")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(images)
    # bf16 keeps 8 significant bits (0.4% per rounding); two blocks, the neck and this tiny width measure ~0.5%
    assert _rel_l2(out, expected) < 0.02


def test_state_dict_keys_are_unchanged_and_an_official_state_dict_loads_strictly(images):
    official = _encoder(seed=3).state_dict()  # segment-anything's own module: the checkpoint format
    enc = set_sam_attention(_encoder(seed=4), "fused")
    assert list(enc.state_dict()) == list(official)
    enc.load_state_dict(official, strict=True)
    reference = _encoder(seed=5)
    reference.load_state_dict(official, strict=True)
    with torch.no_grad():
        assert _rel_l2(enc(images), reference(images)) < 1e-5


def test_reference_copy_shares_the_weights_and_uses_segment_anythings_attention(images):
    enc = set_sam_attention(_encoder(), "fused")
    ref = reference_copy(enc)
    assert sam_attention_kind(ref) == "reference" and sam_attention_kind(enc) == "fused"
    assert all(a is b for a, b in zip(enc.parameters(), ref.parameters(), strict=True))
    with torch.no_grad():
        assert _rel_l2(enc(images), ref(images)) < 1e-5
    with pytest.raises(ValueError, match="attention"):
        set_sam_attention(enc, "flash")


def test_fused_attention_traces_into_one_graph():
    """The GPU path compiles the same module: no graph break in the fused attention (dynamo only, fast)."""
    torch._dynamo.reset()
    enc = _encoder()
    fused = FusedSamAttention(enc.blocks[1].attn)
    x = torch.randn(1, GRID, GRID, 48)
    compiled = torch.compile(fused, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert _rel_l2(compiled(x), enc.blocks[1].attn(x)) < 1e-5
