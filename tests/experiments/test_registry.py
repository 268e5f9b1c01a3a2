"""Methods, groups and their bundle overlays: every row's config resolves to the intended network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from experiments.registry import GROUPS, METHODS, select_methods
from experiments.runner import PROFILES, _config_files, plan_row
from scsam_monai.bundle_command import CONFIGS_DIR
from scsam_monai.networks.scsam import count_trainable_parameters


def test_every_group_has_a_method_and_every_overlay_exists():
    for group in GROUPS:
        if group != "cross_dataset":
            assert any(group in m.groups for m in METHODS), group
    for name, profile in PROFILES.items():
        assert profile.name == name and profile.overlay.is_file(), name
    for method in METHODS:
        for profile in PROFILES:
            for path in _config_files(method, profile):
                assert (CONFIGS_DIR / path).is_file(), path


def test_select_by_name_and_group():
    assert [m.name for m in select_methods(["unet"])] == ["unet"]
    fusion = [m.name for m in select_methods(groups=["fusion"])]
    assert fusion == ["scsam", "scsam_no_fafm", "fusion_cross_attention"]
    assert len(select_methods()) == len(METHODS)
    with pytest.raises(ValueError, match="unknown"):
        select_methods(["nope"])


def _network(method_name: str, profile: str = "tiny"):
    method = next(m for m in METHODS if m.name == method_name)
    parser = ConfigParser()
    parser.read_config(_config_files(method, profile))
    parser.update({"bundle_root": str(CONFIGS_DIR.parent)})
    return parser, parser.get_parsed_content("network")


@pytest.mark.parametrize(
    ("name", "checks"),
    [
        ("scsam", {"head#fusion": "fafm", "head#streams": "both", "loss#lambda_cos": 0.2}),
        ("scsam_no_fafm", {"head#fusion": "concat"}),
        ("fusion_cross_attention", {"head#fusion": "cross_attention"}),
        ("sam_only", {"head#streams": "sam_only"}),
        ("mae_only", {"head#streams": "mae_only"}),
        ("lambda_0.1", {"loss#lambda_cos": 0.1}),
        ("lambda_0.3", {"loss#lambda_cos": 0.3}),
        ("no_residual", {"head#residual": False}),
        ("prompts_dense", {"head#prompts": "dense"}),
        ("prompts_sparse", {"head#prompts": "sparse"}),
    ],
)
def test_scsam_overlays_set_the_head(name, checks):
    parser = ConfigParser()
    parser.read_config(_config_files(next(m for m in METHODS if m.name == name), "tiny"))
    for key, value in checks.items():
        assert parser.get_parsed_content(key) == value
    assert parser.get_parsed_content("train#trainer#max_epochs") == 2  # the profile overlay comes last


def test_variants_differ_in_trainable_parameters():
    counts = {name: count_trainable_parameters(_network(name)[1]) for name in ("scsam", "sam_only", "surgicalsam")}
    assert counts["scsam"] > counts["sam_only"] > counts["surgicalsam"] > 0
    assert type(_network("surgicalsam")[1]).__name__ == "SurgicalSAMHead"


@pytest.mark.parametrize(
    ("name", "cls"),
    [("unet", "UNet"), ("attention_unet", "AttentionUnet"), ("dynunet", "DynUNet"), ("swin_unetr", "SwinUNETR")],
)
def test_supervised_overlays_build_the_network_on_the_profile_canvas(name, cls):
    parser, network = _network(name)
    assert type(network).__name__ == cls
    assert parser.get_parsed_content("canvas_size") == 128  # tiny.yaml's supervised canvas
    loss = parser.get_parsed_content("loss")
    if name == "dynunet":  # nnU-Net's deep supervision around the same Dice + cross-entropy
        assert type(loss).__name__ == "StackedDeepSupervisionLoss"
        loss = loss.loss
    assert type(loss).__name__ == "DiceCELoss"


def test_every_trainable_row_gets_the_budget_overlay_before_the_profile():
    for method in METHODS:
        names = [Path(f).name for f in _config_files(method, "small")]
        assert names[-1] == "small.yaml"
        assert ("budget.yaml" in names) == (method.kind != "zero_shot"), method.name
        if method.kind != "zero_shot":
            assert names[-2] == "budget.yaml"


def test_budget_overlay_adds_early_stopping_to_the_trainer_handlers(tmp_path):
    parser = ConfigParser()
    parser.read_config(_config_files(next(m for m in METHODS if m.name == "unet"), "tiny"))
    parser.update({"output_dir": str(tmp_path), "early_stopping_patience": 3})
    assert parser.get("train#trainer#train_handlers") == "$@train#handlers + [@early_stopping]"
    assert parser.get("early_stopping#validator") == "@validate#evaluator"
    assert parser.get_parsed_content("early_stopping#patience") == 3


def test_the_random_mae_twin_keeps_random_weights_whatever_the_user_overrides():
    twin = next(m for m in METHODS if m.name == "mae_only_random")
    assert twin.groups == {"main": "MAE* (random MAE)"}
    assert twin.overrides == {"mae_checkpoint": None, "mae_allow_random_weights": True}
    parser = ConfigParser()
    parser.read_config(_config_files(twin, "full"))
    parser.update({"mae_checkpoint": "bundle/models/mae_encoder.pth", **twin.overrides})  # the runner's order
    assert parser.get_parsed_content("head#streams") == "mae_only"
    assert parser.get_parsed_content("mae_checkpoint") is None
    assert parser.get_parsed_content("mae_allow_random_weights") is True


def test_small_profile_rows_and_their_budget(tmp_path):
    small = PROFILES["small"]
    assert set(small.methods) == {"scsam", "sam_only", "mae_only", "mae_only_random", "unet", "dynunet"}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "x", "label": "y"}] * 12}))
    plans = {}
    for name in ("scsam", "unet"):
        method = next(m for m in METHODS if m.name == name)
        files = _config_files(method, "small")
        plans[name] = plan_row(method, files, {"datalist": str(datalist)}, small.budget_per_slice)
    scsam, unet = plans["scsam"], plans["unet"]
    assert scsam.budget_samples == unet.budget_samples == 12 * 32  # the same samples for every row
    assert (scsam.max_epochs, unet.max_epochs) == (8, 32)  # 4 cached views per epoch against one view
    assert scsam.max_epochs * scsam.samples_per_epoch == unet.max_epochs * unet.samples_per_epoch
    # both validate after the same samples (every ScSAM epoch, every 4th supervised epoch)
    assert scsam.validation_interval * scsam.samples_per_epoch == unet.validation_interval * unet.samples_per_epoch
    assert (scsam.steps_per_epoch, unet.steps_per_epoch) == (6, 2)  # batch 8 for all rows in the small profile


def test_small_profile_builds_tiny_encoders_and_the_same_canvas_for_supervised_rows():
    parser, network = _network("dynunet", "small")
    assert type(network).__name__ == "DynUNet" and parser.get_parsed_content("canvas_size") == 256
    parser, _ = _network("scsam", "small")
    assert parser.get_parsed_content("sam_arch") == parser.get_parsed_content("mae_arch") == "tiny"
    assert parser.get_parsed_content("canvas_size") == 256 and parser.get_parsed_content("views_per_image") == 4
