"""Model Zoo readiness: the stand-alone inference.yaml and its image-in network, the one model.pt layout (the
head's state dict with its image_normalization), ckpt_export of the head, the packaged bundle, and loading/running
the unzipped bundle through ``monai.bundle.ConfigWorkflow``. The Model Zoo CI's own checks on the packaged bundle
run in ``tests/model_zoo/``.

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
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out

from scsam_monai.data.preprocessing import PREPROCESSING_KEY, ImagePreprocessing
from scsam_monai.model import ScSAMModel
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

CONFIGS = ("train.yaml", "inference.yaml", "demo.yaml")


def _configs(root: Path, names=CONFIGS) -> list[str]:
    return [str(root / "configs" / n) for n in names]


@pytest.fixture(scope="module")
def head_weights(tmp_path_factory, repo_root) -> Path:
    """A demo-profile head's state dict, as training's CheckpointSaver writes model.pt (network of train.yaml)."""
    parser = ConfigParser()
    parser.read_config(_configs(repo_root / "bundle", ("train.yaml", "demo.yaml")))
    torch.manual_seed(0)
    head = parser.get_parsed_content("network")
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


def test_network_def_is_the_image_in_model_in_train_yaml_too_and_training_trains_its_head(repo_root):
    parser = ConfigParser()
    parser.read_config(_configs(repo_root / "bundle", ("train.yaml", "demo.yaml")))
    model = parser.get_parsed_content("network_def")
    assert type(model) is ScSAMModel
    assert type(parser.get_parsed_content("network")) is ScSAMHead
    assert parser.get_parsed_content("network") is model.head
    assert parser.get_parsed_content("sam_stream") is model.sam_encoder
    assert parser.get_parsed_content("image_preprocessing") is model.preprocessing


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
    head = parser.get_parsed_content("network").eval()
    head.load_state_dict(torch.load(head_weights, weights_only=True))
    sam, mae = torch.randn(2, 256, 64, 64), torch.randn(2, 512, 64, 64)
    with torch.no_grad():
        expected = head(sam, mae)
        got = scripted(torch.cat([sam, mae], dim=1))
    assert got.shape == expected.shape == (2, 3, 256, 256)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_package_bundle_writes_a_self_contained_model_zoo_folder_and_zip(repo_root, head_weights, tmp_path):
    from scripts.package_bundle import BUNDLE_NAME, package

    zipped = package(repo_root / "bundle", tmp_path, weights=head_weights, make_zip=True)
    assert zipped == tmp_path / f"{BUNDLE_NAME}.zip"
    names = set(zipfile.ZipFile(zipped).namelist())
    for required in (
        "configs/metadata.json",
        "configs/train.yaml",
        "configs/inference.yaml",
        "docs/README.md",
        "docs/data_license.txt",
        "LICENSE",
        "large_files.yml",
        "models/model.pt",
        "scsam_monai/__init__.py",
        "scsam_monai/model.py",
        "scsam_monai/networks/scsam.py",
    ):
        assert f"{BUNDLE_NAME}/{required}" in names, required
    assert not any("/eval/" in n or "__pycache__" in n or n.endswith(".pyc") for n in names)
    assert (tmp_path / BUNDLE_NAME / "models" / "model.pt").read_bytes() == head_weights.read_bytes()


def test_package_bundle_refuses_weights_that_record_no_normalization(repo_root, head_weights, tmp_path):
    from scripts.package_bundle import package

    state = torch.load(head_weights, weights_only=True)
    state.pop(PREPROCESSING_KEY)
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="records no image_normalization"):
        package(repo_root / "bundle", tmp_path / "out", weights=tmp_path / "old.pt")
    assert not (tmp_path / "out" / "scsam_em_organelle_segmentation").exists()


def _inference_alone(repo_root: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundle" / "configs" / "inference.yaml"))
    parser["tiny_random_encoders"] = True
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_inference_yaml_alone_defines_the_image_in_network_and_its_transforms(repo_root):
    from monai.transforms import Compose

    parser = _inference_alone(repo_root)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, ScSAMModel)
    assert network.state_dict().keys() == network.head.state_dict().keys()  # the head's weights only
    assert ImagePreprocessing.recorded(network.state_dict()) == ImagePreprocessing("per_image")
    for key in ("preprocessing", "postprocessing"):
        assert isinstance(parser.get_parsed_content(key), Compose), key
    assert callable(parser.get_parsed_content("inferer"))


def test_model_pt_from_training_loads_strictly_into_network_def_and_refuses_another_normalization(
    repo_root, head_weights
):
    state = torch.load(head_weights, weights_only=True)
    assert ImagePreprocessing.recorded(state) == ImagePreprocessing("per_image")  # training recorded it
    network = _inference_alone(repo_root).get_parsed_content("network_def")
    network.load_state_dict(state, strict=False)  # MONAI Label's call; the head is still loaded strictly
    torch.testing.assert_close(network.state_dict(), state)
    other = _inference_alone(repo_root, image_normalization="prepared").get_parsed_content("network_def")
    with pytest.raises(ValueError, match="trained with image_normalization 'per_image'.*'prepared'"):
        other.load_state_dict(state)
    with pytest.raises(RuntimeError, match="Missing key"):
        network.load_state_dict({k: v for k, v in state.items() if not k.startswith("fusion.")}, strict=False)


def test_train_and_inference_configs_define_their_shared_ids_identically(repo_root):
    configs = repo_root / "bundle" / "configs"
    train = yaml.safe_load((configs / "train.yaml").read_text())
    inference = yaml.safe_load((configs / "inference.yaml").read_text())
    own = {"imports", "network", "preprocessing", "startup_checks", "initialize", "run"}  # meant to differ
    shared = set(train) & set(inference) - own
    assert {"class_names", "head", "image_normalization", "sam_checkpoint", "mae_checkpoint", "network_def"} <= shared
    for key in sorted(shared):
        assert train[key] == inference[key], key
    # one builder call; every other shared id is a plain value (no component defined twice)
    components = sorted(k for k in shared if isinstance(train[k], dict) and "_target_" in train[k])
    assert components == ["network_def"], components
    assert train["network_def"]["_target_"] == "scsam_monai.model.build_scsam"


def test_unzipped_bundle_loads_and_segments_through_config_workflow(
    repo_root, head_weights, tmp_path, synthetic_dataset
):
    from scripts.package_bundle import package

    zipped = package(repo_root / "bundle", tmp_path / "dist", name="scsam_em", weights=head_weights, make_zip=True)
    zipfile.ZipFile(zipped).extractall(tmp_path / "zoo")
    bundle = tmp_path / "zoo" / "scsam_em"
    synthetic_dataset(tmp_path / "data", num_train=1, num_val=1, num_test=1, size=64, seed=3)
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
        str(tmp_path / "models" / "model_full.ts"), more_extra_files=("inference.yaml",)
    )
    assert meta["scsam_export"]["image_size"] == [96, 80] and meta["scsam_export"]["num_classes"] == 3
    assert meta["scsam_export"]["traced_on"] == "cpu"
    assert meta["name"] == json.loads((bundle / "configs/metadata.json").read_text())["name"]
    assert b"network_def" in extra["inference.yaml"]
    model = workflow.parser.get_parsed_content("network").eval()
    torch.testing.assert_close(model.head.state_dict(), torch.load(head_weights, weights_only=True))
    images = torch.rand(3, 1, 96, 80)
    with torch.no_grad():
        expected, got = model(images), traced(images)
    assert got.shape == (3, 4, 96, 80)  # background, then the 3 classes
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
