"""Tests of the frozen encoders (tiny architectures, random weights) and of their checkpoint loading."""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import shutil
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT

import scsam_monai.networks.encoders as encoders_module
import scsam_monai.networks.precision as precision_module
from scsam_monai.networks.checkpoints import (
    load_mae_checkpoint,
    load_mae_state_dict,
    load_sam_state_dict,
    sha256_file,
    submodule_state,
)
from scsam_monai.networks.encoders import (
    MAE_ARCHITECTURES,
    SAM_ARCHITECTURES,
    FrozenMaeEncoder,
    FrozenSamEncoder,
)
from scsam_monai.networks.geometry import longest_side_size
from scsam_monai.networks.precision import resolve_precision
from tests.helpers import NATIVE_BF16_ONLY, tiny_encoder

LOGGER = "scsam_monai.networks.encoders"


@pytest.fixture(scope="module")
def sam():
    return tiny_encoder("sam", seed=0)


@pytest.fixture(scope="module")
def mae():
    return tiny_encoder("mae", seed=0)


def _sam_checkpoint_state(encoder: FrozenSamEncoder, prefix: str = "") -> dict[str, torch.Tensor]:
    state = {f"{prefix}image_encoder.{k}": v.clone() for k, v in encoder.encoder.state_dict().items()}
    state[f"{prefix}mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    state[f"{prefix}prompt_encoder.no_mask_embed.weight"] = torch.randn(1, 256)
    return state


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h"])
def test_sam_architectures_match_segment_anything(arch, monkeypatch):
    """The ImageEncoderViT arguments equal those of segment_anything.build_sam (captured without building)."""
    build_sam = importlib.import_module("segment_anything.build_sam")  # the package attribute is a function
    captured = {}

    class _Stop(Exception):
        pass

    def capture(**kwargs):
        captured.update(kwargs)
        raise _Stop

    monkeypatch.setattr(build_sam, "ImageEncoderViT", capture)
    with pytest.raises(_Stop):
        build_sam.sam_model_registry[arch]()
    ours = dict(SAM_ARCHITECTURES[arch])
    assert captured.pop("norm_layer")(8).eps == ours.pop("layer_norm_eps") == 1e-6
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in captured.items()} == {k: ours[k] for k in captured}
    assert set(ours) - set(captured) == set()


def test_tiny_architectures_keep_the_embedding_grid(sam, mae):
    tiny = SAM_ARCHITECTURES["tiny"]
    assert tiny["img_size"] // tiny["patch_size"] == 64 and tiny["global_attn_indexes"] == (1,)
    assert sam.img_size == 256 and sam.embedding_shape == (256, 64, 64)
    assert isinstance(sam.encoder, ImageEncoderViT)
    assert mae.img_size == 256 and mae.tile_size == 128 and mae.embedding_shape == (512, 64, 64)
    assert MAE_ARCHITECTURES["mae_vit_512"]["canvas"] // MAE_ARCHITECTURES["mae_vit_512"]["patch_size"] == 64


def test_the_tiny_encoders_on_sams_canvas_give_the_full_size_grids():
    """``tiny_1024``: tiny blocks on the 1024 canvas, the same embeddings as ViT-B and the paper's MAE give."""
    sam = FrozenSamEncoder(arch="tiny_1024", allow_random_weights=True)
    mae = FrozenMaeEncoder(arch="tiny_1024", allow_random_weights=True)
    assert sam.img_size == mae.img_size == 1024 and mae.tile_size == 512
    image = torch.rand(1, 1, 700, 1024)
    with torch.no_grad():
        assert sam(image).shape == (1, *sam.embedding_shape) == (1, 256, 64, 64)
        assert mae(image).shape == (1, *mae.embedding_shape) == (1, 512, 64, 64)
    assert sam.compile_options("cpu") is None  # a test architecture runs eagerly, as "tiny" does


# ------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(1, 1, 256, 256), (2, 3, 100, 173), (1, 1, 300, 120)])
def test_sam_output_shape(sam, shape):
    out = sam(torch.rand(shape))
    assert out.shape == (shape[0], 256, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 1, 256, 256), (2, 3, 100, 173), (1, 1, 300, 120)])
def test_mae_output_shape(mae, shape):
    out = mae(torch.rand(shape))
    assert out.shape == (shape[0], 512, 64, 64) and torch.isfinite(out).all()


def test_input_size(sam, mae):
    assert sam.input_size(100, 173) == longest_side_size(100, 173, 256) == (148, 256)
    assert mae.input_size(300, 120) == (256, 102)


def test_sam_preprocess_replicates_normalises_then_pads(sam):
    x = torch.full((1, 1, 100, 200), 0.5)
    out = sam.preprocess(x)
    assert out.shape == (1, 3, 256, 256)
    expected = (127.5 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(out[0, :, :128, :].mean(dim=(1, 2)), expected)
    assert (out[..., 128:, :] == 0).all()
    rgb = sam.preprocess(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(rgb, out)


def test_mae_preprocess_pads_in_intensity_space_then_normalises(mae):
    x = torch.full((1, 1, 200, 100), 0.75)
    out = mae.preprocess(x)
    assert out.shape == (1, 1, 256, 256)
    torch.testing.assert_close(out[..., :, :128], torch.full((1, 1, 256, 128), (0.75 - 0.5) / 0.25))
    torch.testing.assert_close(out[..., :, 128:], torch.full((1, 1, 256, 128), (0.0 - 0.5) / 0.25))
    rgb = torch.stack([torch.full((200, 100), v) for v in (0.5, 0.75, 1.0)])[None]
    torch.testing.assert_close(mae.preprocess(rgb), out)


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(1, 256, 256),
        torch.rand(1, 2, 64, 64),
        torch.full((1, 1, 64, 64), float("nan")),
        torch.randint(0, 255, (1, 1, 64, 64), dtype=torch.uint8),
        torch.rand(1, 1, 64, 64) * 255,
    ],
    ids=["3d", "2-channels", "nan", "uint8", "0-255"],
)
def test_invalid_images_are_refused(sam, mae, bad):
    for enc in (sam, mae):
        with pytest.raises(ValueError):
            enc.preprocess(bad)


# ------------------------------------------------------------------------------------------------- frozen


@pytest.mark.parametrize("name", ["sam", "mae"])
def test_encoders_are_frozen(name, request):
    enc = request.getfixturevalue(name)
    assert not any(p.requires_grad for p in enc.parameters())
    parent = nn.Sequential(enc)
    parent.train()
    assert parent.training and not enc.training and not any(m.training for m in enc.modules())
    assert enc.train(True) is enc and not enc.training
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.rand(1, 1, 64, 96, requires_grad=True)
    out = enc(x)
    assert not out.requires_grad and out.grad_fn is None
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------- random weights rule


@pytest.mark.parametrize("cls", [FrozenSamEncoder, FrozenMaeEncoder])
def test_refuses_to_run_without_checkpoint(cls):
    with pytest.raises(ValueError, match="allow_random_weights"):
        cls(arch="tiny")


@pytest.mark.parametrize("cls", [FrozenSamEncoder, FrozenMaeEncoder])
def test_random_weights_log_a_warning(cls, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cls(arch="tiny", allow_random_weights=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1
    assert "RANDOM" in warnings[0].getMessage() and "not" in warnings[0].getMessage()


@pytest.mark.parametrize("cls", [FrozenSamEncoder, FrozenMaeEncoder])
def test_random_weights_are_deterministic_and_leave_global_rng_alone(cls, sam, mae):
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    a = cls(arch="tiny", allow_random_weights=True, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    _assert_same_weights(a, sam if cls is FrozenSamEncoder else mae)
    b = cls(arch="tiny", allow_random_weights=True, seed=1)
    assert any(not torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
    assert a.cache_key != b.cache_key


class _NoBlocks(nn.Module):
    """A stand-in for a large ViT: no transformer blocks to swap attention in."""

    blocks = ()


def test_cache_keys(sam, mae, monkeypatch):
    assert sam.cache_key == "sam-tiny-random-seed0"
    assert mae.cache_key == "mae-tiny-t128-random-seed0"
    assert tiny_encoder("mae", tile_size=64).cache_key == "mae-tiny-t64-random-seed0"
    normalised = tiny_encoder("mae", pixel_mean=0.4, pixel_std=0.2)
    assert normalised.cache_key == "mae-tiny-t128-random-seed0-norm0.4_0.2"
    torch.testing.assert_close(normalised.preprocess(torch.full((1, 1, 8, 8), 0.6)), torch.ones(1, 1, 256, 256))
    # another arch: a stand-in module avoids building ViT-B on the CPU
    monkeypatch.setattr(encoders_module, "ImageEncoderViT", lambda **kwargs: _NoBlocks())
    vit_b = FrozenSamEncoder(arch="vit_b", allow_random_weights=True)
    assert vit_b.cache_key == "sam-vit_b-random-seed0" and vit_b.img_size == 1024
    assert vit_b.embedding_shape == (256, 64, 64)


def test_unknown_arch_and_bad_tile_size():
    with pytest.raises(ValueError, match="unknown SAM arch"):
        FrozenSamEncoder(arch="vit_x", allow_random_weights=True)
    with pytest.raises(ValueError, match="unknown MAE arch"):
        FrozenMaeEncoder(arch="vit_x", allow_random_weights=True)
    with pytest.raises(ValueError, match="tile_size"):
        tiny_encoder("mae", tile_size=96)


# ----------------------------------------------------------------------------------------- SAM checkpoints


def test_sam_checkpoint_round_trip(tmp_path, caplog):
    source = tiny_encoder("sam", seed=7)
    path = tmp_path / "sam_tiny.pth"
    torch.save(_sam_checkpoint_state(source), path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = FrozenSamEncoder(arch="tiny", checkpoint=str(path))
    assert not [r for r in caplog.records if r.name == LOGGER]
    _assert_same_weights(loaded, source)
    assert loaded.cache_key == f"sam-tiny-{hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert loaded.cache_key != source.cache_key
    state = load_sam_state_dict(path)
    assert set(submodule_state(state, "mask_decoder")) == {"iou_token.weight"}
    assert set(submodule_state(state, "prompt_encoder.")) == {"no_mask_embed.weight"}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"model_state": {f"sam.{k}": v for k, v in s.items()}, "optimizer_state": {"lr": 1e-4}, "epoch": 3},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {"model": {f"module.sam.{k}": v for k, v in s.items()}},
    ],
    ids=["micro-sam", "ddp-state_dict", "model"],
)
def test_sam_wrapped_checkpoints(tmp_path, wrap):
    source = tiny_encoder("sam", seed=3)
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(_sam_checkpoint_state(source)), path)
    state = load_sam_state_dict(path)
    assert any(k.startswith("image_encoder.") for k in state) and "mask_decoder.iou_token.weight" in state
    _assert_same_weights(FrozenSamEncoder(arch="tiny", checkpoint=path), source)


def test_sam_checkpoint_of_another_arch_is_refused(tmp_path, monkeypatch):
    other = {**SAM_ARCHITECTURES["tiny"], "embed_dim": 32, "depth": 3, "global_attn_indexes": (2,)}
    monkeypatch.setitem(SAM_ARCHITECTURES, "tiny_other", other)
    source = FrozenSamEncoder(arch="tiny_other", allow_random_weights=True)
    path = tmp_path / "other_arch.pth"
    torch.save(_sam_checkpoint_state(source), path)
    with pytest.raises(ValueError) as info:
        FrozenSamEncoder(arch="tiny", checkpoint=path)
    message = str(info.value)
    assert str(path) in message and "'tiny'" in message and "'tiny_other'" in message


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="large_files.yml"):
        FrozenSamEncoder(arch="tiny", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        FrozenMaeEncoder(arch="tiny", checkpoint=str(tmp_path / "nope.pth"))


def test_corrupt_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    source = tiny_encoder("sam")
    good = tmp_path / "good.pth"
    torch.save(_sam_checkpoint_state(source), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(ValueError, match=path.name):
            FrozenSamEncoder(arch="tiny", checkpoint=path)
        with pytest.raises(ValueError, match=path.name):
            FrozenMaeEncoder(arch="tiny", checkpoint=path)


class _Custom:
    """Stands for arbitrary pickled code in a checkpoint."""

    def __init__(self):
        self.value = 1


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "config": _Custom()}, path)
    with pytest.raises(ValueError, match="weights_only") as info:
        load_sam_state_dict(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="pickled.pth"):
        load_mae_state_dict(path)


def test_checkpoint_without_sam_weights(tmp_path):
    path = tmp_path / "not_sam.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="not_sam.pth.*image_encoder"):
        FrozenSamEncoder(arch="tiny", checkpoint=path)
    with pytest.raises(ValueError, match="not_sam.pth"):
        FrozenMaeEncoder(arch="tiny", checkpoint=path)


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 9000  # > 2 chunks of 1 MiB
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- MAE checkpoints


def test_mae_checkpoint_round_trip(tmp_path):
    source = tiny_encoder("mae", seed=5)
    state = {f"encoder.{k}": v.clone() for k, v in source.backbone.state_dict().items()}
    state["decoder_embed.weight"] = torch.randn(4, 512)  # MAE decoder: dropped
    state["mask_token"] = torch.zeros(1, 1, 512)
    path = tmp_path / "mae_tiny.pth"
    torch.save({"model": state, "epoch": 10}, path)
    loaded = FrozenMaeEncoder(arch="tiny", checkpoint=path)
    _assert_same_weights(loaded, source)
    assert loaded.cache_key == f"mae-tiny-t128-{sha256_file(path)}"
    plain = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in source.backbone.state_dict().items()}, plain)
    assert set(load_mae_state_dict(plain)) == set(source.backbone.state_dict())
    wrong = tmp_path / "mae_wrong.pth"
    torch.save({k: v for k, v in source.backbone.state_dict().items() if not k.startswith("blocks.")}, wrong)
    with pytest.raises(ValueError, match="mae_wrong.pth.*'tiny'"):
        FrozenMaeEncoder(arch="tiny", checkpoint=wrong)


# -------------------------------------------------------------------------------------------- MAE stitching


class _MeanTokenViT(nn.Module):
    """Stand-in ViT: token (i, j) of a tile is the mean intensity of its patch; one class token of 1e6."""

    num_prefix_tokens = 1

    def __init__(self, patch_size: int, dim: int = 3):
        super().__init__()
        self.patch_size, self.dim, self.calls = patch_size, dim, 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        tokens = F.avg_pool2d(x, self.patch_size).flatten(2).transpose(1, 2).expand(-1, -1, self.dim)
        cls = torch.full((x.shape[0], 1, self.dim), 1e6)
        return torch.cat([cls, tokens], dim=1)


@pytest.mark.parametrize("tile_size", [128, 64])
def test_mae_stitches_tiles_by_position(tile_size):
    enc = tiny_encoder("mae", tile_size=tile_size)
    enc.backbone = _MeanTokenViT(enc.patch_size)
    values = torch.tensor([[0.1, 0.4], [0.7, 1.0]])
    image = values.repeat_interleave(128, 0).repeat_interleave(128, 1)[None, None]  # quadrants
    ramp = torch.linspace(0, 1, 200)[None, None, :, None] * torch.linspace(0, 1, 150)[None, None, None, :]
    batch_out = enc(image)
    assert enc.backbone.calls == 1  # every tile of the image in one batch
    assert batch_out.shape == (1, 3, 64, 64)
    for i in range(2):
        for j in range(2):
            quadrant = batch_out[0, :, 32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
            torch.testing.assert_close(quadrant, torch.full_like(quadrant, (values[i, j].item() - 0.5) / 0.25))
    out = enc(ramp)
    assert enc.backbone.calls == 2
    expected = F.avg_pool2d(enc.preprocess(ramp), enc.patch_size).expand(-1, 3, -1, -1)
    torch.testing.assert_close(out, expected)


def test_mae_tile_and_stitch_are_inverse(mae):
    x = torch.randn(2, 1, 256, 256)
    tiles = mae.tile(x)
    assert tiles.shape == (8, 1, 128, 128)
    torch.testing.assert_close(tiles[1], x[0, :, :128, 128:])  # row-major: top-right second
    torch.testing.assert_close(tiles[6], x[1, :, 128:, :128])
    torch.testing.assert_close(mae.stitch(tiles), x)


# ------------------------------------------------------------------------------ MAE arch shared with pre-training


def test_mae_vit_is_built_from_one_arch_name(mae):
    from scsam_monai.mae.model import MaskedAutoencoder

    built = encoders_module.build_mae_vit("tiny")
    pretraining = MaskedAutoencoder(arch="tiny").encoder
    shapes = {k: v.shape for k, v in mae.backbone.state_dict().items()}
    assert shapes == {k: v.shape for k, v in built.state_dict().items()}
    assert shapes == {k: v.shape for k, v in pretraining.state_dict().items()}
    assert mae.architecture == encoders_module.mae_architecture("tiny")
    with pytest.raises(ValueError, match="num_heads"):
        encoders_module.mae_architecture("tiny", num_heads=3)  # 512 is not a multiple of 3


def test_mae_depth_and_heads_overrides_change_the_cache_key():
    enc = tiny_encoder("mae", depth=2, num_heads=8)
    assert len(enc.backbone.blocks) == 2 and enc.backbone.blocks[0].attn.num_heads == 8
    assert enc.cache_key == "mae-tiny-t128-d2h8-random-seed0"


# ----------------------------------------------------------------------- MAE stitching with the real timm ViT


def _token_local(enc: FrozenMaeEncoder) -> FrozenMaeEncoder:
    """Without its transformer blocks the ViT's token (i, j) depends on patch (i, j) of its tile only (patch
    embedding + interpolated position embedding + norm), which makes every token's place observable."""
    enc.backbone.blocks = nn.Identity()
    return enc


@pytest.mark.parametrize("tile_size", [128, 64])
def test_mae_real_vit_tokens_land_where_their_pixels_were(tile_size):
    enc = _token_local(tiny_encoder("mae", tile_size=tile_size))
    torch.manual_seed(0)
    image = torch.rand(1, 1, 256, 192)  # non-square; longest side = canvas: no resize, padding on the right
    base = enc(image)
    for r, c in [(5, 7), (10, 40), (40, 3), (50, 45), (63, 47)]:  # one in each 128-tile, and the last patch
        changed = image.clone()
        changed[..., 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 1.0 - changed[..., 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
        diff = (enc(changed) - base).abs().amax(dim=(0, 1))
        assert diff[r, c] > 1e-3
        assert torch.nonzero(diff > 1e-6).tolist() == [[r, c]], (r, c)


def test_mae_real_vit_encodes_tiles_independently_and_stitches_them_in_place():
    enc = tiny_encoder("mae")  # full ViT: attention mixes tokens in a tile
    torch.manual_seed(1)
    image = torch.rand(1, 1, 200, 256)  # non-square the other way: padding at the bottom
    base = enc(image)
    assert base.shape == (1, 512, 64, 64)
    for ti, tj in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        changed = image.clone()
        changed[..., 128 * ti + 30 : 128 * ti + 40, 128 * tj + 50 : 128 * tj + 60] = 1.0
        diff = (enc(changed) - base).abs().amax(dim=1)[0] > 1e-6
        block = torch.zeros(64, 64, dtype=torch.bool)
        block[32 * ti : 32 * ti + 32, 32 * tj : 32 * tj + 32] = True
        assert diff[block].all() and not diff[~block].any(), (ti, tj)


def test_mae_vit_512_stitches_four_512_tiles_into_64x64():
    enc = _token_local(FrozenMaeEncoder(arch="mae_vit_512", allow_random_weights=True))
    assert (enc.img_size, enc.tile_size, enc.tiles_per_side) == (1024, 512, 2)
    torch.manual_seed(2)
    image = torch.rand(1, 1, 1024, 640)
    base = enc(image)
    assert base.shape == (1, 512, 64, 64)
    changed = image.clone()
    changed[..., 16 * 40 : 16 * 41, 16 * 35 : 16 * 36] = 0.0  # patch (40, 35): bottom-right tile
    diff = (enc(changed) - base).abs().amax(dim=(0, 1))
    assert torch.nonzero(diff > 1e-6).tolist() == [[40, 35]]


# ------------------------------------------------------------------------------- MAE pre-training exports


def test_mae_export_records_its_architecture(tmp_path):
    from scsam_monai.mae.model import MaskedAutoencoder

    torch.manual_seed(0)
    pretrained = MaskedAutoencoder(arch="tiny", depth=2, num_heads=8)
    path = pretrained.save_encoder(tmp_path / "mae_encoder.pth", epoch=7)
    state, record = load_mae_checkpoint(path)
    assert record["arch"] == "tiny" and record["depth"] == 2 and record["epoch"] == 7
    assert set(state) == set(pretrained.encoder.state_dict())
    enc = FrozenMaeEncoder(arch="tiny", checkpoint=path)  # depth and heads from the record
    _assert_same_weights(enc.backbone, pretrained.encoder)
    assert enc.backbone.blocks[0].attn.num_heads == 8
    assert enc.cache_key == f"mae-tiny-t128-d2h8-{sha256_file(path)}"
    with pytest.raises(ValueError, match="depth=2.*depth=1"):
        FrozenMaeEncoder(arch="tiny", checkpoint=path, depth=1)
    with pytest.raises(ValueError, match="pre-trained with MAE arch 'tiny'.*mae_arch: tiny"):
        FrozenMaeEncoder(arch="mae_vit_512", checkpoint=path)


# --------------------------------------------------------------------------------------------- SAM speed paths


def test_sam_fused_attention_in_fp32_keeps_the_reference_function_and_switches_off_an_outer_autocast():
    images = torch.rand(2, 1, 96, 80, generator=torch.Generator().manual_seed(0))
    reference = tiny_encoder("sam", precision="fp32", attention="reference")
    fused32 = tiny_encoder("sam", precision="fp32")
    assert list(fused32.state_dict()) == list(reference.state_dict())  # the swap keeps every key
    assert (reference.attention, fused32.attention) == ("reference", "fused")
    expected = reference(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # "fp32" switches an outer autocast off
        out32 = fused32(images)
    assert out32.dtype == torch.float32 and float((out32 - expected).norm() / expected.norm()) < 1e-5


@NATIVE_BF16_ONLY  # "auto" never picks bf16 elsewhere: checked on every CPU by the test below
def test_sam_bf16_stays_close_to_the_reference_and_is_what_auto_runs_on_a_bf16_cpu():
    images = torch.rand(2, 1, 96, 80, generator=torch.Generator().manual_seed(0))
    expected = tiny_encoder("sam", precision="fp32", attention="reference")(images)
    bf16 = tiny_encoder("sam", precision="bf16")
    out16 = bf16(images)
    assert out16.dtype == torch.float32 and 0 < float((out16 - expected).norm() / expected.norm()) < 0.02
    auto = tiny_encoder("sam")
    assert auto.compute_dtype() == torch.bfloat16 and torch.equal(auto(images), out16)


def test_sam_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    images = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    auto = tiny_encoder("sam")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert auto.compute_dtype() is None and torch.equal(auto(images), tiny_encoder("sam", precision="fp32")(images))
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert auto.compute_dtype() == torch.bfloat16  # the dtype only: running it is the test above, on such a CPU


def test_explicit_bf16_on_a_cpu_that_emulates_it_is_named_once(monkeypatch, caplog):
    precision_module._warn_emulated_bf16.cache_clear()
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger=precision_module.__name__):
        assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert "emulates" not in caplog.text
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger=precision_module.__name__):
        for _ in range(3):  # an encoder resolves its precision at every call
            assert resolve_precision("bf16", "cpu") == torch.bfloat16
        assert resolve_precision("auto", "cpu") is None
    assert caplog.text.count("PyTorch emulates it") == 1 and "'auto' or 'fp32'" in caplog.text
    precision_module._warn_emulated_bf16.cache_clear()


def test_sam_speed_switches_are_checked():
    with pytest.raises(ValueError, match="precision"):
        tiny_encoder("sam", precision="int8")
    with pytest.raises(ValueError, match="attention"):
        tiny_encoder("sam", attention="flash")
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("fp32", "cuda") is None and resolve_precision("bf16", "cpu") == torch.bfloat16


def test_sam_compile_setting_decides_per_device_and_arch():
    tiny = tiny_encoder("sam")
    assert tiny.compile_setting == "auto" and tiny.compile_options("cpu") is None  # not worth compiling
    vit_b = FrozenSamEncoder(arch="vit_b", allow_random_weights=True)
    assert vit_b.compile_options("cpu") == {"options": {"freezing": True}}  # the CPU speed path
    assert vit_b.compile_options("cuda") is None  # "auto" compiles on CPUs only
    explicit = tiny_encoder("sam", compile=True)
    assert explicit.compile_options("cpu") == {"options": {"freezing": True}} and explicit.compile_options("cuda") == {}
    mode = tiny_encoder("sam", compile="max-autotune")
    assert mode.compile_options("cpu") == {"mode": "max-autotune"}
    assert tiny_encoder("sam", compile=False).compile_options("cpu") is None


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="Inductor's CPU backend needs a C++ compiler (without one, compile='auto' runs eagerly: tested below)",
)
def test_sam_encoder_compiled_with_freezing_on_cpu_keeps_the_function_and_the_keys():
    """The CPU speed path (Inductor with frozen weights, "auto" precision: bf16 autocast on a CPU with native bf16,
    else float32) against segment-anything's fp32 encoder."""
    images = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    reference = tiny_encoder("sam", precision="fp32", attention="reference")
    compiled = tiny_encoder("sam", compile=True)
    native = precision_module.cpu_has_native_bf16()
    assert compiled.compute_dtype() == (torch.bfloat16 if native else None)
    keys = list(compiled.state_dict())
    expected = reference(images)
    out = compiled(images)
    assert compiled.compiled  # it really runs compiled
    assert list(compiled.state_dict()) == keys == list(reference.state_dict())
    error = float((out - expected).norm() / expected.norm())
    assert out.dtype == torch.float32 and (0 < error < 0.02 if native else error < 1e-4), error
    assert torch.equal(compiled(images), out)  # the frozen graph is reused, deterministically
    copy_ = copy.deepcopy(compiled)  # as MONAI Label copies a network: the copy compiles at its own first call
    assert not copy_.compiled and list(copy_.state_dict()) == keys


def _failing_backend(graph, example_inputs):
    """A torch.compile backend that fails as Inductor does on a machine without a C++ compiler."""
    raise RuntimeError("Compiler: cc is not found")


def test_sam_compile_auto_falls_back_to_eager_when_compiling_fails(monkeypatch, caplog):
    images = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    eager = tiny_encoder("sam", compile=False)
    auto = tiny_encoder("sam")
    monkeypatch.setattr(auto, "compile_options", lambda device: {"backend": _failing_backend})
    with caplog.at_level("WARNING"):
        out = auto(images)
    assert "running it eagerly" in caplog.text and not auto.compiled
    assert torch.equal(out, eager(images))
    explicit = tiny_encoder("sam", compile=True)
    monkeypatch.setattr(explicit, "compile_options", lambda device: {"backend": _failing_backend})
    with pytest.raises(Exception, match="cc is not found"):  # an explicit compile request fails loudly
        explicit(images)


def test_sam_checkpoint_loads_strictly_into_the_fused_encoder(tmp_path):
    """An official-format checkpoint (segment-anything's key names) loads into the fused encoder unchanged."""
    torch.manual_seed(7)
    official = ImageEncoderViT(
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **{k: v for k, v in SAM_ARCHITECTURES["tiny"].items() if k != "layer_norm_eps"},
    )
    state = {f"image_encoder.{k}": v for k, v in official.state_dict().items()}
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    enc = FrozenSamEncoder(arch="tiny", checkpoint=path, precision="fp32")
    assert enc.attention == "fused"
    for key, value in official.state_dict().items():
        assert torch.equal(enc.encoder.state_dict()[key], value), key
    x = enc.preprocess(torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        assert float((enc.encoder(x) - official.eval()(x)).norm() / official(x).norm()) < 1e-5


# ------------------------------------------------------------------------------ MAE: subtracting the blank response


def _position_share(features: torch.Tensor) -> float:
    """The feature probe's fixed-pattern share of embeddings (N, C, g, g)."""
    from experiments.feature_probe import fixed_pattern_share

    return fixed_pattern_share(features.flatten(2).transpose(1, 2))


def test_mae_subtract_blank_removes_the_image_independent_response():
    from scsam_monai.mae.model import sincos_pos_embed_2d

    plain = tiny_encoder("mae", seed=3)
    blank = tiny_encoder("mae", seed=3, subtract_blank=True)
    assert blank.cache_key == "mae-tiny-t128-random-seed3-blank"
    # position embeddings as strong as a pre-training's (fixed sin-cos, scaled up): the features are dominated by
    # a pattern that is the same for every image
    for enc in (plain, blank):
        with torch.no_grad():
            enc.backbone.pos_embed[0, 1:] = 4.0 * sincos_pos_embed_2d(512, 16, 16)
    torch.manual_seed(0)
    images = torch.rand(6, 1, 256, 256)
    raw, centred = plain(images), blank(images)
    assert centred.shape == raw.shape == (6, 512, 64, 64)
    # exactly the raw features minus the response to a blank canvas at the mean intensity (0.5 = 0 normalised)
    response = plain(torch.full((1, 1, 256, 256), 0.5))
    torch.testing.assert_close(centred, raw - response)
    torch.testing.assert_close(blank(torch.full((2, 1, 256, 256), 0.5)), torch.zeros(2, 512, 64, 64))
    assert _position_share(raw) > 0.5
    assert _position_share(centred) < 0.5 * _position_share(raw)
    # the images still differ as much: the subtraction removes a constant, not content
    torch.testing.assert_close(centred[1:] - centred[:1], raw[1:] - raw[:1], atol=1e-4, rtol=1e-4)


def test_mae_subtract_blank_keeps_tiles_independent_and_batches_consistent():
    enc = tiny_encoder("mae", subtract_blank=True)
    torch.manual_seed(4)
    images = torch.rand(3, 1, 256, 200)
    together = enc(images)
    one_by_one = torch.cat([enc(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
    changed = images[:1].clone()
    changed[..., 10:20, 140:150] = 1.0  # top-right tile only
    diff = (enc(changed) - together[:1]).abs().amax(dim=1)[0] > 1e-6
    assert diff[:32, 32:].any() and not diff[32:, :].any() and not diff[:, :32].any()
