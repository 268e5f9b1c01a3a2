"""The model builder (``scsam_monai.model.build_scsam``): each checkpoint read once, only the encoders the head's
streams use, the preprocessing saved with the weights, and the export head built from the same settings."""

from __future__ import annotations

import pytest
import torch

import scsam_monai.hashing
import scsam_monai.networks.checkpoints as checkpoints
from scsam_monai.data.preprocessing import PREPROCESSING_KEY, ImagePreprocessing
from scsam_monai.model import ScSAMModel, build_export_head, build_scsam
from scsam_monai.networks.build import build_sam_decoder_parts
from tests.helpers import tiny_encoder

CLASSES = ["background", "nucleus", "mitochondria", "granules"]
TINY = {"sam_arch": "tiny", "mae_arch": "tiny", "sam_allow_random_weights": True, "mae_allow_random_weights": True}


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> str:
    """A tiny SAM checkpoint in the official layout: image encoder, mask decoder and prompt encoder weights."""
    torch.manual_seed(7)
    encoder = tiny_encoder("sam", seed=3)
    decoder, prompt_encoder = build_sam_decoder_parts(canvas_size=256)
    state = {f"image_encoder.{k}": v for k, v in encoder.encoder.state_dict().items()}
    state.update({f"mask_decoder.{k}": v + 0.01 for k, v in decoder.state_dict().items()})
    state.update({f"prompt_encoder.{k}": v + 0.01 for k, v in prompt_encoder.state_dict().items()})
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(state, path)
    return str(path)


def test_the_builder_reads_the_sam_checkpoint_once_and_hashes_it_once(sam_checkpoint, monkeypatch):
    loads, hashes = [], []
    real_load, real_hash = torch.load, scsam_monai.hashing.hashlib.sha256

    def counting_load(path, *args, **kwargs):
        loads.append(str(path))
        return real_load(path, *args, **kwargs)

    def counting_hash(*args, **kwargs):
        hashes.append(1)
        return real_hash(*args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", counting_load)
    monkeypatch.setattr(scsam_monai.hashing.hashlib, "sha256", counting_hash)
    monkeypatch.setattr(scsam_monai.hashing, "_DIGESTS", {})
    model = build_scsam(class_names=CLASSES, **{**TINY, "sam_checkpoint": sam_checkpoint})
    assert loads.count(sam_checkpoint) == 1, loads
    state = real_load(sam_checkpoint, weights_only=True)
    # both parts got the file's weights: the encoder's and the head's decoder parts
    torch.testing.assert_close(
        model.sam_encoder.encoder.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"]
    )
    torch.testing.assert_close(model.head.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    assert model.sam_encoder.cache_key.startswith("sam-tiny-")
    assert len(hashes) == 1
    assert scsam_monai.hashing.sha256_file(sam_checkpoint) == model.sam_encoder.cache_key.split("-")[-1]
    assert len(hashes) == 1  # the start-up check's digest of the same file comes from the first reading


def test_only_the_encoders_the_head_streams_use_are_built():
    both = build_scsam(class_names=CLASSES, **TINY)
    assert both.sam_encoder is not None and both.mae_encoder is not None
    mae_only = build_scsam(class_names=CLASSES, head={"streams": "mae_only"}, **TINY)
    assert mae_only.sam_encoder is None and mae_only.mae_encoder is not None
    sam_only = build_scsam(class_names=CLASSES, head={"streams": "sam_only"}, **TINY)
    assert sam_only.sam_encoder is not None and sam_only.mae_encoder is None
    assert mae_only(torch.rand(1, 1, 40, 56)).shape == (1, 4, 40, 56)  # background and 3 classes
    tiled = build_scsam(class_names=CLASSES, mae_options={"tile_size": 64}, **TINY)  # FrozenMaeEncoder's options
    assert tiled.mae_encoder.tile_size == 64 and both.mae_encoder.tile_size == 128
    with pytest.raises(ValueError, match="class_names needs the background and at least one class"):
        build_scsam(class_names=["background"], **TINY)


def test_the_model_owns_its_preprocessing_and_its_weights_record_it():
    model = build_scsam(class_names=CLASSES, image_normalization="prepared", **TINY)
    assert model.preprocessing == ImagePreprocessing("prepared") == ImagePreprocessing.of_model(model)
    state = model.state_dict()
    assert state.keys() - model.head.state_dict().keys() == set()  # the head's weights only
    assert ImagePreprocessing.recorded(state) == ImagePreprocessing("prepared")
    other = build_scsam(class_names=CLASSES, **TINY)
    with pytest.raises(ValueError, match="trained with image_normalization 'prepared'.*'per_image'"):
        other.load_state_dict(state)
    older = {k: v for k, v in state.items() if k != PREPROCESSING_KEY}  # weights saved before the record
    build_scsam(class_names=CLASSES, image_normalization="prepared", **TINY).load_state_dict(older)


def test_the_export_head_takes_the_model_pt_of_the_model_as_it_is():
    model = build_scsam(class_names=CLASSES, **TINY)
    export = build_export_head(model)
    export.load_state_dict(model.state_dict())
    assert isinstance(model, ScSAMModel) and ImagePreprocessing.of_model(export) == model.preprocessing
    with torch.no_grad():
        sam, mae = model.embed(torch.rand(1, 1, 48, 64))
        torch.testing.assert_close(export(torch.cat([sam, mae], dim=1)), model.head.eval()(sam, mae))
