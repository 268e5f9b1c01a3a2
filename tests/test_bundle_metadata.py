"""Tests of the bundle's descriptive files: configs/metadata.json, configs/logging.conf, large_files.yml.

MONAI's own ``verify_metadata`` downloads the JSON schema named in ``metadata.json`` and needs ``jsonschema``;
neither is available offline, so the schema's ``required`` keys and types (meta_schema_20240725.json) are
checked here directly. MONAI's ``verify_net_in_out`` and ``download_large_files`` run for real (the latter with
the network call replaced).
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.apps.utils import SUPPORTED_HASH_TYPES
from monai.bundle import ConfigParser
from monai.utils import get_equivalent_dtype

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
META_FILE = CONFIGS / "metadata.json"
LARGE_FILES = BUNDLE / "large_files.yml"
LOGGING_CONF = CONFIGS / "logging.conf"

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
# ``required`` of meta_schema_20240725.json, with the JSON type each key must have.
SCHEMA_REQUIRED = {
    "schema": str,
    "version": str,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "required_packages_version": dict,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "network_data_format": dict,
}
# optional keys of the schema that this bundle fills, with their types
SCHEMA_OPTIONAL = {
    "changelog": dict,
    "name": str,
    "data_source": str,
    "data_type": str,
    "image_classes": str,
    "label_classes": str,
    "pred_classes": str,
    "intended_use": str,
    "references": list,
    "supported_apps": dict,
}
# ``required`` of the schema's tensor definition
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
SAM_FILES = ("sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth")
HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def class_names() -> list[str]:
    return yaml.safe_load((CONFIGS / "train.yaml").read_text(encoding="utf-8"))["class_names"]


@pytest.fixture(scope="module")
def large_files() -> list[dict]:
    return yaml.safe_load(LARGE_FILES.read_text(encoding="utf-8"))["large_files"]


def _check_tensor_spec(name: str, spec: dict) -> None:
    missing = [k for k in TENSOR_REQUIRED if k not in spec]
    assert not missing, f"{name}: missing {missing}"
    assert isinstance(spec["type"], str) and isinstance(spec["format"], str), name
    assert isinstance(spec["num_channels"], int) and spec["num_channels"] > 0, name
    shape = spec["spatial_shape"]
    assert isinstance(shape, list) and shape, name
    assert all(isinstance(s, int) and s > 0 or isinstance(s, str) for s in shape), f"{name}: {shape}"
    assert isinstance(get_equivalent_dtype(spec["dtype"], torch.Tensor), torch.dtype), name
    value_range = spec["value_range"]
    assert isinstance(value_range, list) and len(value_range) in (0, 2), f"{name}: {value_range}"
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range), name
    if value_range:
        assert value_range[0] < value_range[1], name
    if "is_patch_data" in spec:
        assert isinstance(spec["is_patch_data"], bool), name
    if "channel_def" in spec:
        assert isinstance(spec["channel_def"], dict), name
        assert all(int(k) < spec["num_channels"] for k in spec["channel_def"]), name


def test_metadata_has_the_schema_required_keys_with_their_types(meta):
    for key, kind in {**SCHEMA_REQUIRED, **SCHEMA_OPTIONAL}.items():
        assert key in meta, key
        assert isinstance(meta[key], kind), f"{key}: expected {kind.__name__}, got {type(meta[key]).__name__}"
    assert meta["schema"] == SCHEMA_URL
    assert all(isinstance(r, str) and r for r in meta["references"])
    assert all(isinstance(v, str) and v for v in meta["required_packages_version"].values())


def test_metadata_version_is_in_the_changelog(meta):
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["version"] in meta["changelog"]


def _lock_pins() -> dict[str, str]:
    return {
        name.strip().lower(): version.strip()
        for name, version in (
            line.split("==", 1)
            for line in (ROOT / "requirements-lock.txt").read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#")
        )
    }


def _recorded(meta) -> dict[str, str]:
    return {
        "monai": meta["monai_version"],
        "torch": meta["pytorch_version"],
        "numpy": meta["numpy_version"],
        **{name.lower(): version for name, version in meta["required_packages_version"].items()},
    }


def test_metadata_pins_are_the_lock_files_and_the_tested_environments(meta):
    """What the Model Zoo installs from metadata.json is what the lock file installs and the tests ran with."""
    from importlib.metadata import version

    pins = _lock_pins()
    for package, pinned in _recorded(meta).items():
        assert pins.get(package) == pinned, (package, pinned, pins.get(package))
        assert version(package) == pinned, (package, pinned, version(package))


def test_metadata_declares_every_package_the_packaged_code_imports(meta):
    """Every third-party module that scsam_monai (as packaged for the Model Zoo) imports has its pin."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    from scripts.package_bundle import LEFT_OUT

    package = ROOT / "scsam_monai"
    modules = set()
    for path in package.rglob("*.py"):
        if path.relative_to(package).parts[0] in LEFT_OUT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"scsam_monai", "__future__"}
    distributions = packages_distributions()
    recorded = _recorded(meta)
    undeclared = {
        m: distributions.get(m)
        for m in third_party
        if not {d.lower() for d in distributions.get(m, [])} & set(recorded)
    }
    assert not undeclared, undeclared


def test_network_data_format_describes_a_single_channel_image_and_per_class_logits(meta, class_names):
    fmt = meta["network_data_format"]
    image = fmt["inputs"]["image"]
    pred = fmt["outputs"]["pred"]
    _check_tensor_spec("inputs.image", image)
    _check_tensor_spec("outputs.pred", pred)
    assert image["num_channels"] == 1 and len(image["spatial_shape"]) == 2
    assert image["value_range"] == [0, 1] and image["dtype"] == "float32"
    assert pred["spatial_shape"] == image["spatial_shape"]  # logits come back at the input size
    assert pred["value_range"] == []  # logits are unbounded
    assert pred["num_channels"] == len(class_names)  # the background, then the classes
    assert [pred["channel_def"][str(i)] for i in range(pred["num_channels"])] == class_names  # channel = label value


def test_every_data_format_section_follows_the_tensor_schema(meta):
    sections = [k for k in meta if k == "network_data_format" or re.fullmatch(r"[_a-zA-Z0-9]+_data_format", k)]
    assert "head_data_format" in sections
    for section in sections:
        assert set(meta[section]) >= {"inputs", "outputs"}, section
        for side in ("inputs", "outputs"):
            for name, spec in meta[section][side].items():
                _check_tensor_spec(f"{section}.{side}.{name}", spec)


def test_class_descriptions_name_every_label_value(meta, class_names):
    for key in ("label_classes", "pred_classes"):
        for value, name in enumerate(class_names):
            assert f"{value} {name}" in meta[key], f"{key} lacks '{value} {name}'"


def test_no_evaluation_numbers_are_claimed_without_a_result(meta):
    # no BetaSeg result has been measured: metadata must not carry numbers, and the model card must say so
    assert "eval_metrics" not in meta
    readme = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    assert "No result on BetaSeg has been measured" in readme


def test_head_data_format_matches_the_trained_head(meta):
    from scsam_monai.networks.build import build_scsam_head

    fmt = meta["head_data_format"]
    sam, mae = fmt["inputs"]["sam_embedding"], fmt["inputs"]["mae_embedding"]
    torch.manual_seed(0)
    head = build_scsam_head().eval()
    with torch.no_grad():
        out = head(
            torch.randn(1, sam["num_channels"], *sam["spatial_shape"]),
            torch.randn(1, mae["num_channels"], *mae["spatial_shape"]),
        )
    pred = fmt["outputs"]["pred"]
    assert tuple(out.shape) == (1, pred["num_channels"], *pred["spatial_shape"])
    assert out.dtype == get_equivalent_dtype(pred["dtype"], torch.Tensor)


def test_monai_verify_net_in_out_accepts_the_full_model_on_the_demo_profile():
    from monai.bundle import verify_net_in_out

    # the demo profile's tiny random-weight encoders; no trained head is needed to check shapes and dtypes
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(META_FILE),
        config_file=[str(CONFIGS / f) for f in ("train.yaml", "inference.yaml", "demo.yaml")],
        device="cpu",
        any=96,
    )


def test_logging_conf_has_a_console_handler_at_info_with_time_level_and_name():
    conf = configparser.RawConfigParser()
    conf.read(LOGGING_CONF)
    assert conf["logger_root"]["level"] == "INFO"
    handler = conf[f"handler_{conf['logger_root']['handlers'].strip()}"]
    assert handler["class"] == "StreamHandler" and handler["level"] == "INFO"
    fmt = conf[f"formatter_{handler['formatter']}"]["format"]
    for field in ("%(asctime)s", "%(levelname)s", "%(name)s", "%(message)s"):
        assert field in fmt
    # and Python's logging accepts it as a file config (in a subprocess, to leave this process's logging alone)
    code = (
        "import logging, logging.config, sys;"
        f"logging.config.fileConfig({str(LOGGING_CONF)!r}, disable_existing_loggers=False);"
        "logging.getLogger('scsam.check').info('hello')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - INFO - scsam.check - hello", out.stdout), out


def test_large_files_entries_have_path_url_and_hash_type(large_files):
    assert large_files
    paths = [entry["path"] for entry in large_files]
    assert len(paths) == len(set(paths))
    for entry in large_files:
        assert {"path", "url", "hash_type"} <= set(entry), entry
        assert entry["path"].startswith("models/") and ".." not in entry["path"], entry["path"]
        assert entry["url"].startswith("https://"), entry["url"]
        assert entry["hash_type"] in SUPPORTED_HASH_TYPES, entry["hash_type"]
        hash_val = entry.get("hash_val", "")
        if hash_val:
            assert re.fullmatch(r"[0-9a-f]+", hash_val) and len(hash_val) == HASH_LENGTHS[entry["hash_type"]], entry


def test_large_files_lists_only_what_the_default_uses_each_with_a_hash(large_files):
    # the Model Zoo checks every download: an entry without a hash is not allowed
    assert all(entry.get("hash_val") for entry in large_files), large_files
    by_name = {Path(entry["path"]).name: entry for entry in large_files}
    assert set(by_name) == {SAM_FILES[0]}  # the default's SAM ViT-B; nobody publishes the MAE encoder
    entry = by_name[SAM_FILES[0]]
    assert entry["url"] == f"https://dl.fbaipublicfiles.com/segment_anything/{SAM_FILES[0]}"
    assert entry["hash_type"] == "sha256"
    # the model card names the other SAM checkpoints and says how to make the MAE encoder
    card = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    for name in (*SAM_FILES[1:], "vit_b_em_organelles.pt", "run pretraining", "pretrain_mae.yaml"):
        assert name in card, name


def test_the_sam_checkpoint_named_in_train_yaml_is_downloadable(large_files):
    expression = yaml.safe_load((CONFIGS / "train.yaml").read_text(encoding="utf-8"))["sam_checkpoint"]
    match = re.search(r"/(models/[^'\"]+)", expression)
    assert match, expression
    assert match.group(1) in {entry["path"] for entry in large_files}


def test_monai_download_large_files_reads_every_entry(monkeypatch, large_files):
    import monai.bundle.scripts as scripts

    calls = []
    monkeypatch.setattr(scripts, "download_url", lambda **kwargs: calls.append(kwargs))
    scripts.download_large_files(bundle_path=str(BUNDLE))
    assert [Path(c["filepath"]).resolve() for c in calls] == [(BUNDLE / e["path"]).resolve() for e in large_files]
    for call, entry in zip(calls, large_files, strict=True):
        assert call["url"] == entry["url"]
        assert call.get("hash_val") == (entry.get("hash_val") or None)  # MONAI drops an empty hash_val
    # MONAI's own parser reads the file too (the configs' syntax, not only YAML)
    parser = ConfigParser()
    parser.read_config(str(LARGE_FILES))
    assert len(parser.get("large_files")) == len(large_files)


def _expressions(node, where: str = ""):
    """``(id, text)`` of every ``$`` expression in a parsed YAML config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _expressions(value, f"{where}#{key}" if where else str(key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _expressions(value, f"{where}#{n}")
    elif isinstance(node, str) and node.startswith("$"):
        yield where, node


def test_config_expressions_are_short_logic_lives_in_the_package():
    # a `$` expression longer than this is logic that belongs in scsam_monai, called with `_target_` or refs
    long = [
        f"{path.relative_to(CONFIGS)}: {key} ({len(text)} characters)"
        for path in sorted(CONFIGS.rglob("*.yaml"))
        for key, text in _expressions(yaml.safe_load(path.read_text()))
        if len(text) > 150
    ]
    assert not long, long


def test_every_job_has_one_definition_and_run_refers_to_it():
    for files, job in (
        (["train.yaml"], "training"),
        (["train.yaml", "evaluate.yaml"], "evaluating"),
        (["train.yaml", "inference.yaml"], "inference"),
    ):
        config = ConfigParser.load_config_files([str(CONFIGS / f) for f in files])
        assert config["run"] == f"@{job}", files
    text = "\n".join(p.read_text() for p in CONFIGS.rglob("*.yaml"))
    assert "input_dir" not in text
    # which encoders a head's streams need is the model builder's to decide (scsam_monai.model.build_scsam)
    assert "@head#streams" not in text


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml", "pretrain_mae.yaml"])
@pytest.mark.parametrize(
    "device, expected",
    [("cpu", False), ("$torch.device('cpu')", False), ("cuda:0", True), ("$torch.device('cuda', 1)", True)],
)
def test_amp_follows_the_configured_device_not_the_machine(config, device, expected):
    """``--device cpu`` on a GPU machine must not switch on autocast (and fp16 loss scaling) for CPU tensors."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser["device"] = device
    assert parser.get_parsed_content("amp") is expected
