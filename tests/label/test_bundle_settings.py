"""The app's ``--conf`` settings of the bundle, read without MONAI Label."""

from __future__ import annotations

import pytest

from scsam_monai.label.bundle import BundleSettings, default_bundle_dir


def test_defaults_to_the_repository_bundle_and_reads_overlays_and_overrides():
    settings = BundleSettings.from_conf(
        {"configs": "demo.yaml", "overrides": '{"mae_arch": "tiny", "train#batch_size": 2}', "device": "cpu"}
    )
    assert settings.bundle_dir == default_bundle_dir().resolve()
    assert [p.name for p in settings.overlays] == ["demo.yaml"]
    assert settings.overrides == {"mae_arch": "tiny", "train#batch_size": 2}
    assert str(settings.torch_device()) == "cpu"
    assert settings.class_names() == ["background", "nucleus", "mitochondria", "granules"]
    parser = settings.parser("train.yaml", "inference.yaml")
    assert parser["bundle_root"] == str(settings.bundle_dir)
    assert parser.get_parsed_content("sam_arch") == "tiny"


@pytest.mark.parametrize(
    ("conf", "match"),
    [
        ({"bundle": "/no/such/bundle"}, "configs/train.yaml is missing"),
        ({"configs": "nope.yaml"}, "nope.yaml: config overlay not found"),
        ({"overrides": "{not json"}, "JSON object"),
        ({"overrides": "[1, 2]"}, "JSON object"),
    ],
)
def test_wrong_settings_are_named(conf, match):
    with pytest.raises(ValueError, match=match):
        BundleSettings.from_conf(conf)
