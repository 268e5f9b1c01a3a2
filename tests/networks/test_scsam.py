"""Tests of scsam_monai.networks.scsam (head, full model), its builder and the batched mask decoder."""

from __future__ import annotations

import hashlib

import pytest
import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from scsam_monai.losses import ScSAMLoss
from scsam_monai.networks.build import HEAD_KEYS, PAPER_HEAD, build_scsam_head
from scsam_monai.networks.checkpoints import load_sam_state_dict
from scsam_monai.networks.mask_decoder import build_mask_decoder
from scsam_monai.networks.scsam import ScSAM, ScSAMHead, class_embeddings, count_trainable_parameters
from tests.helpers import tiny_encoder

G = 16  # small token grid for speed; the default head uses 64


def _head(**kwargs) -> ScSAMHead:
    torch.manual_seed(0)
    return build_scsam_head(grid_size=G, canvas_size=4 * G, **kwargs)


def _embeddings(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(b, 256, G, G), torch.randn(b, 512, G, G)


def test_default_head_is_the_paper_configuration():
    head = build_scsam_head()
    assert head.num_classes == 3 and head.grid_size == 64 and head.canvas_size == 1024
    assert type(head.fusion).__name__ == "FAFM"
    assert head.prompt_encoder.prompts == "dense+sparse" and head.prompt_encoder.residual
    # trainable parameters of the paper's configuration, part by part (the paper reports 27.6M in all): FAFM's
    # two channel aligners, two conv+GroupNorm fusion blocks, the auxiliary block and both channel attentions;
    # the class prompt encoder's prototypes, activation MLP, dense and sparse heads; SAM's mask decoder without
    # its IoU head (552,036 parameters, kept in the state dict but frozen: the head has no IoU loss). SAM's own
    # prompt encoder (6,220, the positional and no-mask embeddings) is frozen and not counted.
    parts = {name: count_trainable_parameters(module) for name, module in head.named_children()}
    assert parts == {"fusion": 2_103_296, "prompt_encoder": 723_204, "mask_decoder": 3_506_304, "sam_prompt_encoder": 0}
    assert count_trainable_parameters(head) == sum(parts.values()) == 6_332_804
    assert count_trainable_parameters(head.mask_decoder.iou_prediction_head) == 0
    assert head.streams == PAPER_HEAD["streams"] and tuple(PAPER_HEAD) == HEAD_KEYS


# sha256 of the sorted state-dict keys, as the head built them before the builder existed: trained checkpoints
# (models/model.pt) and TorchScript exports load only while these stay the same
_STATE_KEYS = {
    "paper": (171, "b393e96ce424477e"),
    "concat": (160, "25263a0e0bb5adb5"),
    "cross_attention": (164, "824ce9e579e59a1b"),
    "sam_only": (154, "5d432c26bd1b0cc4"),
    "mae_only": (154, "5d432c26bd1b0cc4"),
}


@pytest.mark.parametrize(
    ("name", "settings"),
    [("paper", {}), ("concat", {"fusion": "concat"}), ("cross_attention", {"fusion": "cross_attention"}),
     ("sam_only", {"streams": "sam_only"}), ("mae_only", {"streams": "mae_only"})],
)  # fmt: skip
def test_built_head_keeps_the_state_dict_keys_of_trained_checkpoints(name, settings):
    keys = sorted(_head(settings=settings).state_dict())
    assert (len(keys), hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]) == _STATE_KEYS[name]


def test_settings_mapping_builds_the_same_head_as_keyword_arguments():
    settings = {**PAPER_HEAD, "fusion": "concat", "prompts": "dense", "num_sparse_tokens": 2}
    from_mapping = _head(settings=settings).state_dict()
    from_keywords = _head(fusion="concat", prompts="dense", num_sparse_tokens=2).state_dict()
    assert from_mapping.keys() == from_keywords.keys()
    assert all(torch.equal(from_mapping[k], from_keywords[k]) for k in from_mapping)
    with pytest.raises(ValueError, match="unknown key 'fussion'"):
        build_scsam_head({"fussion": "concat"})
    with pytest.raises(ValueError, match="'fusion' is given both in settings and as an argument"):
        build_scsam_head({"fusion": "concat"}, fusion="cross_attention")
    with pytest.raises(ValueError, match="streams"):
        build_scsam_head({"streams": "sam_and_mae"})


def test_head_constructor_takes_built_parts_and_checks_their_grid():
    built = _head()
    parts = {"fusion": built.fusion, "prompt_encoder": built.prompt_encoder, "mask_decoder": built.mask_decoder}
    head = ScSAMHead(**parts, sam_prompt_encoder=built.sam_prompt_encoder, canvas_size=4 * G)
    assert head.state_dict().keys() == built.state_dict().keys() and head.num_classes == 3
    other_grid = build_scsam_head(grid_size=2 * G, canvas_size=8 * G).sam_prompt_encoder
    with pytest.raises(ValueError, match="grid"):
        ScSAMHead(**parts, sam_prompt_encoder=other_grid, canvas_size=4 * G)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"fusion": "concat"},
        {"fusion": "cross_attention"},
        {"streams": "sam_only"},
        {"streams": "mae_only"},
        {"residual": False},
        {"prompts": "dense"},
        {"prompts": "sparse"},
    ],
)
def test_head_variants_give_per_class_logits(kwargs):
    sam, mae = _embeddings()
    logits = _head(**kwargs)(sam, mae)
    assert logits.shape == (2, 3, 4 * G, 4 * G)
    assert torch.isfinite(logits).all()


def test_batched_decoder_matches_segment_anything_per_prompt_loop():
    """One batched call over B*C prompts equals SAM's own MaskDecoder called once per prompt."""
    torch.manual_seed(0)
    ours = build_mask_decoder().eval()
    stock = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    ).eval()
    stock.load_state_dict(ours.state_dict())
    p = 4
    emb = torch.randn(p, 256, 8, 8)
    pe = torch.randn(1, 256, 8, 8)
    sparse = torch.randn(p, 5, 256)
    dense = torch.randn(p, 256, 8, 8)
    with torch.no_grad():
        batched, _ = ours(emb, pe, sparse, dense, multimask_output=False)
        looped = torch.cat([stock(emb[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], False)[0] for i in range(p)])
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-4)


def test_decoding_is_one_batched_decoder_call(monkeypatch):
    head = _head()
    calls = []
    original = head.mask_decoder.predict_masks

    def counting(*args, **kwargs):
        calls.append(kwargs["image_embeddings"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(head.mask_decoder, "predict_masks", counting)
    head(*_embeddings(b=2))
    assert calls == [2 * 3]


def test_class_embeddings_are_area_weighted_means():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    features[0, 1] = 10.0
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, :2, :2] = 1  # class 1 covers grid cell (0, 0) fully
    label[0, 0, 2:, 2:3] = 2  # class 2 covers half of grid cell (1, 1)
    emb, ids = class_embeddings(features, label, num_classes=3)
    assert ids.tolist() == [0, 1]  # class 3 absent: no row
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 10.0]))
    torch.testing.assert_close(emb[1], torch.tensor([4.0, 10.0]))


def test_forward_with_aux_and_gradients_reach_only_trainable_parts():
    head = _head()
    sam, mae = _embeddings()
    label = torch.randint(0, 4, (2, 1, 4 * G, 4 * G))
    logits, aux = head.forward_with_aux(sam, mae, label)
    assert aux["aligned_sam"].shape == aux["aligned_mae"].shape == (2, 256, G, G)
    assert aux["class_embeddings"].shape[1] == 256 and aux["class_ids"].max() <= 2
    logits.mean().backward()
    assert all(p.grad is None for p in head.sam_prompt_encoder.parameters())
    assert head.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    assert head.fusion.align_mae[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"prompts": "dense"}, {"prompts": "sparse"}, {"residual": False}, {"fusion": "concat"},
     {"fusion": "cross_attention"}, {"streams": "sam_only"}, {"streams": "mae_only"}],
)  # fmt: skip
def test_every_trainable_parameter_gets_a_gradient_from_the_loss(kwargs):
    # DistributedDataParallel stops on trainable parameters without a gradient; they also inflate the count
    head = _head(**kwargs)
    sam, mae = _embeddings()
    sam = None if kwargs.get("streams") == "mae_only" else sam
    mae = None if kwargs.get("streams") == "sam_only" else mae
    label = torch.randint(0, 4, (2, 1, 4 * G, 4 * G))
    logits, aux = head(sam, mae, label=label)
    ScSAMLoss(num_classes=3)(logits, label, aux)["loss"].backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert head.mask_decoder.iou_prediction_head.layers[0].weight.requires_grad is False
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in head.state_dict()  # SAM checkpoints still load


def test_original_size_postprocessing():
    head = _head().eval()
    sam, mae = _embeddings(b=1)
    with torch.no_grad():
        out = head(sam, mae, input_size=(4 * G, 2 * G), original_size=(50, 25))
    assert out.shape == (1, 3, 50, 25)
    with pytest.raises(ValueError, match="input_size"):
        head(sam, mae, original_size=(50, 25))


def _sam_checkpoint(tmp_path, head: ScSAMHead) -> str:
    encoder = tiny_encoder("sam")
    state = {f"image_encoder.{k}": v for k, v in encoder.encoder.state_dict().items()}
    torch.manual_seed(5)
    donor = build_scsam_head(grid_size=G, canvas_size=4 * G)
    for name, module in (("mask_decoder", donor.mask_decoder), ("prompt_encoder", donor.sam_prompt_encoder)):
        state.update({f"{name}.{k}": v + 0.01 for k, v in module.state_dict().items()})
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    return str(path)


def test_head_initialises_decoder_and_prompt_embeddings_from_a_sam_checkpoint(tmp_path):
    path = _sam_checkpoint(tmp_path, _head())
    head = _head(sam_checkpoint=path)
    state = load_sam_state_dict(path)
    torch.testing.assert_close(head.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    torch.testing.assert_close(
        head.sam_prompt_encoder.point_embeddings[1].weight, state["prompt_encoder.point_embeddings.1.weight"]
    )
    assert not any(p.requires_grad for p in head.sam_prompt_encoder.parameters())


def test_full_model_from_image_to_logits_at_input_size():
    sam = tiny_encoder("sam")
    mae = tiny_encoder("mae")
    torch.manual_seed(0)
    model = ScSAM(sam_encoder=sam, mae_encoder=mae, head=build_scsam_head(canvas_size=sam.img_size)).eval()
    images = torch.rand(1, 1, 96, 80)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (1, 4, 96, 80)  # background, then the 3 classes
    with pytest.raises(ValueError, match="canvas"):
        ScSAM(sam_encoder=sam, mae_encoder=mae, head=build_scsam_head(canvas_size=1024))


def test_a_wrong_sam_checkpoint_is_refused_by_the_builder(tmp_path):
    path = _sam_checkpoint(tmp_path, _head())
    with pytest.raises(ValueError, match="mask_decoder weights do not fit this head"):
        build_scsam_head(grid_size=G, canvas_size=4 * G, feature_dim=128, sam_checkpoint=path)


def test_the_background_channel_makes_argmax_the_label_map():
    """with_background: channel 0 at the threshold's logit, so argmax = the per-class rule of merge_class_logits."""
    from scsam_monai.data.transforms import merge_class_logits
    from scsam_monai.networks.scsam import with_background

    logits = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    logits[0, :, 0, 0] = torch.tensor([-1.0, -2.0, -0.5])  # every class below 0.5: background
    logits[0, :, 0, 1] = torch.tensor([0.0, -1.0, -1.0])  # exactly at the threshold: background
    full = with_background(logits)
    assert full.shape == (2, 4, 16, 16) and (full[:, 0] == 0).all()
    torch.testing.assert_close(full[:, 1:], logits)
    label = full.argmax(1)
    assert label[0, 0, 0] == 0 and label[0, 0, 1] == 0
    assert torch.equal(label, merge_class_logits(logits)[:, 0])
    assert torch.equal(with_background(logits, 0.9).argmax(1), merge_class_logits(logits, 0.9)[:, 0])
