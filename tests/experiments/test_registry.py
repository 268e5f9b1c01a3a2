"""Methods, groups and their bundle overlays: every row's config resolves to the intended network."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from scsam_monai.bundle_cli import CONFIGS_DIR
from scsam_monai.experiments.registry import GROUPS, METHODS, select_methods
from scsam_monai.experiments.runner import PROFILES, _config_files
from scsam_monai.networks.scsam import count_trainable_parameters


def test_every_group_has_a_method_and_every_overlay_exists():
    for group in GROUPS:
        if group != "cross_dataset":
            assert any(group in m.groups for m in METHODS), group
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


def _network(method_name: str):
    method = next(m for m in METHODS if m.name == method_name)
    parser = ConfigParser()
    parser.read_config(_config_files(method, "tiny"))
    parser.update({"bundle_root": str(CONFIGS_DIR.parent)})
    return parser, parser.get_parsed_content("network_def")


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
