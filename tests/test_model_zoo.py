"""Model Zoo readiness: verify_net_in_out on the image-in network, ckpt_export of the head to TorchScript, the
packaged zip, and loading/running the unzipped bundle through ``monai.bundle.ConfigWorkflow``.

All on the demo profile (tiny random-weight encoders) with a random-initialised head saved as ``model.pt``:
these check the plumbing, not segmentation quality.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from scsam_monai.data.synthetic import write_synthetic_dataset
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

CONFIGS = ("train.yaml", "inference.yaml", "demo.yaml")


def _configs(root: Path, names=CONFIGS) -> list[str]:
    return [str(root / "configs" / n) for n in names]


@pytest.fixture(scope="module")
def head_weights(tmp_path_factory, repo_root) -> Path:
    """A demo-profile head's state dict, as CheckpointSaver writes model.pt."""
    parser = ConfigParser()
    parser.read_config(_configs(repo_root / "bundle", ("train.yaml", "demo.yaml")))
    torch.manual_seed(0)
    head = parser.get_parsed_content("head_def")
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(head.state_dict(), path)
    return path


def test_network_def_is_the_image_in_model_and_passes_verify_net_in_out(repo_root):
    bundle = repo_root / "bundle"
    parser = ConfigParser()
    parser.read_config(_configs(bundle))
    assert isinstance(parser.get_parsed_content("network_def"), ScSAM)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs/metadata.json"),
        config_file=_configs(bundle),
        device="cpu",
        any=32,
    )


def test_training_network_is_the_head(repo_root):
    parser = ConfigParser()
    parser.read_config(_configs(repo_root / "bundle", ("train.yaml", "demo.yaml")))
    assert type(parser.get_parsed_content("network_def")) is ScSAMHead


def test_ckpt_export_writes_torchscript_head_equal_to_the_eager_head(repo_root, head_weights, tmp_path):
    bundle = repo_root / "bundle"
    target = tmp_path / "model_head.ts"
    ckpt_export(
        net_id="export_head_def",
        filepath=str(target),
        ckpt_file=str(head_weights),
        meta_file=str(bundle / "configs/metadata.json"),
        config_file=_configs(bundle, ("train.yaml", "demo.yaml")),
        input_shape=[1, 768, 64, 64],
        use_trace=True,
    )
    scripted = torch.jit.load(str(target))
    parser = ConfigParser()
    parser.read_config(_configs(bundle, ("train.yaml", "demo.yaml")))
    head = parser.get_parsed_content("head_def").eval()
    head.load_state_dict(torch.load(head_weights, weights_only=True))
    sam, mae = torch.randn(2, 256, 64, 64), torch.randn(2, 512, 64, 64)
    with torch.no_grad():
        expected = head(sam, mae)
        got = scripted(torch.cat([sam, mae], dim=1))
    assert got.shape == expected.shape == (2, 3, 256, 256)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_package_bundle_writes_model_zoo_layout(repo_root, head_weights, tmp_path):
    from scripts.package_bundle import package

    zipped = package(repo_root / "bundle", tmp_path / "scsam_em.zip", weights=[head_weights])
    names = set(zipfile.ZipFile(zipped).namelist())
    for required in (
        "scsam_em/configs/metadata.json",
        "scsam_em/configs/train.yaml",
        "scsam_em/configs/inference.yaml",
        "scsam_em/docs/README.md",
        "scsam_em/docs/data_license.txt",
        "scsam_em/LICENSE",
        "scsam_em/large_files.yml",
        "scsam_em/models/model.pt",
    ):
        assert required in names
    assert not any("/eval/" in n for n in names)


def test_unzipped_bundle_loads_and_segments_through_config_workflow(repo_root, head_weights, tmp_path):
    from scripts.package_bundle import package

    zipped = package(repo_root / "bundle", tmp_path / "scsam_em.zip", weights=[head_weights])
    zipfile.ZipFile(zipped).extractall(tmp_path / "zoo")
    bundle = tmp_path / "zoo" / "scsam_em"
    write_synthetic_dataset(tmp_path / "data", num_train=1, num_val=1, num_test=1, size=64, seed=3)
    image = tmp_path / "data" / "images" / "test_000.tif"
    workflow = ConfigWorkflow(
        config_file=_configs(bundle),
        meta_file=str(bundle / "configs/metadata.json"),
        workflow_type=None,
        run_id="inference",
        bundle_root=str(bundle),
        ckpt_dir=str(bundle / "models"),
        dataset_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"),
        input=str(image),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    model = workflow.parser.get_parsed_content("network")
    torch.testing.assert_close(model.head.state_dict(), torch.load(head_weights, weights_only=True))
    label = tifffile.imread(tmp_path / "out" / "predictions" / "test_000_seg.tif")
    assert label.shape == (64, 64) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    records = json.loads((tmp_path / "out" / "predictions" / "predictions.json").read_text())
    assert records[0]["format"] == "tiff"


def test_whole_model_exports_to_torchscript_equal_to_the_eager_model(repo_root, head_weights, tmp_path):
    from monai.data import load_net_with_metadata

    bundle = repo_root / "bundle"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(head_weights.read_bytes())
    workflow = ConfigWorkflow(
        config_file=_configs(bundle),
        meta_file=str(bundle / "configs/metadata.json"),
        workflow_type=None,
        run_id="export",
        bundle_root=str(bundle),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "out"),
        export_image_size=[96, 80],
        infer_split=None,  # demo.yaml segments its test split; exporting reads no data
    )
    workflow.initialize()
    workflow.run()
    traced, meta, extra = load_net_with_metadata(
        str(tmp_path / "models" / "model_full.ts"), more_extra_files=("train.yaml", "inference.yaml")
    )
    assert meta["scsam_export"]["image_size"] == [96, 80] and meta["scsam_export"]["num_classes"] == 3
    assert meta["scsam_export"]["traced_on"] == "cpu"
    assert meta["name"] == json.loads((bundle / "configs/metadata.json").read_text())["name"]
    assert b"head_def" in extra["train.yaml"]
    model = workflow.parser.get_parsed_content("network").eval()
    torch.testing.assert_close(model.head.state_dict(), torch.load(head_weights, weights_only=True))
    images = torch.rand(3, 1, 96, 80)
    with torch.no_grad():
        expected, got = model(images), traced(images)
    assert got.shape == (3, 3, 96, 80)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_whole_model_export_refuses_a_head_checkpoint_that_does_not_fit(repo_root, tmp_path):
    from scsam_monai.export import export_scsam_torchscript

    parser = ConfigParser()
    parser.read_config(_configs(repo_root / "bundle"))
    model = parser.get_parsed_content("network_def")
    torch.save({"not_a_head": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="do not fit"):
        export_scsam_torchscript(model, tmp_path / "model.pt", tmp_path / "model_full.ts", image_size=(64, 64))
    assert not (tmp_path / "model_full.ts").exists()
