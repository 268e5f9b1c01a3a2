"""Tests of the checks a bundle run makes before it starts (``scsam_monai.startup_checks``)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist

from scsam_monai.startup_checks import (
    HEAD_KEYS,
    ConfigValidationError,
    DatalistSplit,
    bundle_command_line,
    check_checkpoint,
    check_config_keys,
    check_datalist,
    check_head,
    check_input,
    check_items,
    read_split,
    require_input,
    validate_run,
)
from tests.helpers import run_bundle

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
PROFILES = REPO / "experiments" / "configs"
LARGE_FILES = REPO / "bundle" / "large_files.yml"
MONAI_MAIN = str(Path(sys.executable).parent / "lib/site-packages/monai/bundle/__main__.py")
CLASSES = ["background", "nucleus", "mitochondria", "granules"]
VALID_HEAD = {"fusion": "fafm", "streams": "both", "residual": True, "prompts": "dense+sparse", "num_sparse_tokens": 4}


def _argv(*args: str, configs=("train.yaml", "demo.yaml")) -> list[str]:
    files = "[" + ",".join(f"'{c if Path(c).is_absolute() else CONFIGS / c}'" for c in configs) + "]"
    return [MONAI_MAIN, "run", "training", "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", files, *args]


def _datalist(root: Path, n_train: int = 2, n_val: int = 1, label_max: int = 3, labels: dict | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    content: dict = {"training": [], "validation": []}
    for split, n in (("training", n_train), ("validation", n_val)):
        for k in range(n):
            name = f"{split}_{k}.tif"
            tifffile.imwrite(root / "images" / name, rng.integers(0, 255, (16, 16)).astype(np.uint8))
            label = np.zeros((16, 16), np.uint8)
            label[2:6, 2:6] = label_max
            tifffile.imwrite(root / "labels" / name, label)
            content[split].append({"image": f"images/{name}", "label": f"labels/{name}"})
    if labels is not None:
        content["labels"] = labels
    (root / "datalist.json").write_text(json.dumps(content))
    return root / "datalist.json"


# ---- settings -----------------------------------------------------------------------------------------------


def test_head_keys_are_those_of_train_yaml():
    assert tuple(yaml.safe_load((CONFIGS / "train.yaml").read_text())["head"]) == HEAD_KEYS


def test_misspelled_head_key_is_reported_with_the_closest_key():
    (problem,) = check_head({**VALID_HEAD, "fussion": "concat"})
    assert "head#fussion is not a setting of the head (did you mean 'fusion'?)" in problem


def test_invalid_head_values_are_reported():
    problems = check_head({"fusion": "fafn", "streams": "both", "residual": "yes", "num_sparse_tokens": 0})
    text = "\n".join(problems)
    assert "head#fusion must be one of fafm, concat, cross_attention, got 'fafn' (did you mean 'fafm'?)" in text
    assert "head#residual must be true or false" in text
    assert "head#num_sparse_tokens must be a positive integer" in text
    assert check_head(VALID_HEAD) == []


def test_overlay_and_command_line_keys_are_checked_against_the_bundle(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(
        "my_root: /data\ndataset_dir: \"$@my_root + '/em'\"\n"  # a helper key that is referred to: fine
        "train#trainer#max_epoch: 3\nloss#lambda_coss: 0.3\nviews_per_imag: 2\n"
    )
    argv = _argv(
        "--head#fussion", "concat", "--sam_chekpoint", "x.pth", "--train#batch_sise", "4",
        "--optimizer#lrr", "0.1", "--validate#postprocesing#threshold", "1", "--learning_rate", "0.01",
        configs=("train.yaml", "demo.yaml", str(overlay)),
    )  # fmt: skip
    command = bundle_command_line(argv)
    assert command["run_id"] == "training" and command["config_file"][-1] == str(overlay)
    problems = check_config_keys(command["config_file"], command["overrides"], run_id=command["run_id"])
    expected = [
        "train#trainer#max_epoch (%s): SupervisedTrainer has no argument 'max_epoch' (did you mean 'max_epochs'?)",
        "loss#lambda_coss (%s): scsam_monai.losses.ScSAMLoss has no argument 'lambda_coss' (did you mean "
        "'lambda_cos'?)",
        "views_per_imag (%s) is not a setting of this bundle and nothing refers to it (did you mean "
        "'views_per_image'?)",
        "head#fussion (command line) is not a setting of the head (did you mean 'fusion'?)",
        "sam_chekpoint (command line) is not a setting of this bundle and nothing refers to it (did you mean "
        "'sam_checkpoint'?)",
        "train#batch_sise (command line) is not a setting of train (did you mean 'batch_size'?)",
        "optimizer#lrr (command line): torch.optim.Adam has no argument 'lrr' (did you mean 'lr'?)",
        "validate#postprocesing#threshold (command line): there is no 'postprocesing' in validate (did you mean "
        "'postprocessing'?)",
    ]
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start.replace("%s", str(overlay))), problem


def test_valid_overlays_and_overrides_pass(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(
        "root: /data\ndataset_dir: \"$@root + '/em'\"\ntrain#trainer#epoch_length: 2\n"
        "augmentation#transforms#0#roi_scale: 0.6\nimage_normalization: prepared\n"
        "+imports: ['$import numpy']\n"
    )
    argv = _argv("--head#fusion", "concat", "--resume", "--class_names", "['background','a']",
                 configs=("train.yaml", "demo.yaml", str(overlay)))  # fmt: skip
    command = bundle_command_line(argv)
    # the values as MONAI receives them (read by fire, as ``python -m monai.bundle`` reads them)
    assert command["overrides"] == {"head#fusion": "concat", "resume": True, "class_names": ["background", "a"]}
    assert check_config_keys(command["config_file"], command["overrides"], run_id="training") == []
    assert bundle_command_line(["pytest", "-q"]) is None


def test_the_bundles_own_variant_overlays_are_known_settings():
    # a row of the experiments reruns as its command line says: train.yaml + variant overlays + a bench profile
    overlays = [CONFIGS / "variants/supervised.yaml", CONFIGS / "variants/dynunet.yaml", PROFILES / "tiny.yaml"]
    assert check_config_keys([CONFIGS / "train.yaml", *overlays], {}) == []
    (typo,) = check_config_keys([CONFIGS / "train.yaml", *overlays], {"supervised_canvs": 1})
    assert (
        typo.startswith("supervised_canvs (command line) is not a setting of this bundle")
        and "'supervised_canvas'" in typo
    )


# ---- checkpoints --------------------------------------------------------------------------------------------


def test_missing_sam_checkpoint_names_the_file_its_hash_url_and_the_download_command(tmp_path):
    (problem,) = check_checkpoint(tmp_path / "models" / "sam_vit_b_01ec64.pth", arch="vit_b", large_files=LARGE_FILES)
    assert f"SAM checkpoint not found: {tmp_path / 'models' / 'sam_vit_b_01ec64.pth'}" in problem
    assert "sha256 ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912" in problem
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in problem
    assert f"python -m monai.bundle download_large_files --bundle_path {LARGE_FILES.parent}" in problem
    (unlisted,) = check_checkpoint(tmp_path / "mine.pth", large_files=LARGE_FILES)
    assert "not listed in" in unlisted and "sam_vit_b_01ec64.pth" in unlisted


def _listed_checkpoint(tmp_path: Path, name: str, content: bytes, listed_hash: str | None = None) -> tuple[Path, Path]:
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "models" / name
    path.write_bytes(content)
    digest = listed_hash if listed_hash is not None else hashlib.sha256(content).hexdigest()
    entry = {"path": f"models/{name}", "url": f"https://example.org/{name}", "hash_val": digest, "hash_type": "sha256"}
    (tmp_path / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    return path, tmp_path / "large_files.yml"


def test_listed_checkpoint_is_verified_against_its_sha256(tmp_path):
    path, listing = _listed_checkpoint(tmp_path, "sam_vit_b_01ec64.pth", b"complete download")
    assert check_checkpoint(path, arch="vit_b", large_files=listing) == []
    path.write_bytes(b"complete dow")  # an interrupted copy
    (problem,) = check_checkpoint(path, arch="vit_b", large_files=listing)
    assert "the download is incomplete or the file was replaced" in problem and str(path) in problem
    assert check_checkpoint(path, arch="vit_b", large_files=listing, verify_hash=False) == []


def test_checkpoint_listed_for_another_sam_architecture_is_refused(tmp_path):
    path, listing = _listed_checkpoint(tmp_path, "sam_vit_l_0b3195.pth", b"weights")
    (problem,) = check_checkpoint(path, arch="vit_b", large_files=listing)
    assert "is the vit_l SAM checkpoint but sam_arch is vit_b; set --sam_arch vit_l" in problem


def test_official_sam_archs_are_the_encoder_architectures_but_the_test_only_ones():
    from scsam_monai.networks.encoders import MAE_ARCHITECTURES, SAM_ARCHITECTURES, TEST_ARCHITECTURES
    from scsam_monai.startup_checks import SAM_ARCHS

    assert SAM_ARCHS == ("vit_b", "vit_l", "vit_h")
    assert set(SAM_ARCHS) == set(SAM_ARCHITECTURES) - set(TEST_ARCHITECTURES)
    assert set(TEST_ARCHITECTURES) <= set(MAE_ARCHITECTURES)  # each test SAM has its MAE of the same canvas
    for name in TEST_ARCHITECTURES:
        assert SAM_ARCHITECTURES[name]["img_size"] == MAE_ARCHITECTURES[name]["canvas"]


def test_no_checkpoint_needs_random_weights_to_be_allowed(tmp_path):
    (problem,) = check_checkpoint(None, kind="SAM")
    assert "sam_checkpoint is not set and sam_allow_random_weights is false" in problem
    assert check_checkpoint(None, kind="SAM", allow_random_weights=True) == []
    (mae,) = check_checkpoint(tmp_path / "mae_encoder.pth", kind="MAE")
    assert "MAE checkpoint not found" in mae and "pretrain_mae.yaml" in mae


# ---- the datalist -------------------------------------------------------------------------------------------


def test_valid_datalist_is_counted(tmp_path):
    problems, counts = check_datalist(_datalist(tmp_path), ["training", "validation"], CLASSES)
    assert problems == [] and counts == {"training": 2, "validation": 1}


def test_missing_files_are_listed_in_one_message_with_the_datalist(tmp_path):
    datalist = _datalist(tmp_path, n_train=8)
    for k in range(7):
        (tmp_path / "images" / f"training_{k}.tif").unlink()
    (problem,) = check_datalist(datalist, ["training", "validation"], CLASSES)[0]
    assert problem.startswith(f"{datalist}: 7 file(s) it names do not exist")
    assert str(tmp_path / "images" / "training_0.tif") in problem and "... and 2 more" in problem


def test_missing_datalist_empty_and_absent_splits(tmp_path):
    (problem,) = check_datalist(tmp_path / "datalist.json", ["training"])[0]
    assert f"datalist not found: {tmp_path / 'datalist.json'}" in problem
    (tmp_path / "datalist.json").write_text('{"training": [], "validation": [')
    assert "is not a readable JSON datalist" in check_datalist(tmp_path / "datalist.json", ["training"])[0][0]
    (tmp_path / "datalist.json").write_text('{"training": [], "validaton": [], "test": [{"image": "a.tif"}]}')
    problems, _ = check_datalist(tmp_path / "datalist.json", ["training", "validation", "test"])
    assert "the split 'training' is empty" in problems[0]
    assert "has no split 'validation' (did you mean 'validaton'?)" in problems[1]
    assert "item 0 of 'test' needs image and label paths" in problems[2]
    assert check_datalist(tmp_path / "datalist.json", []) == ([], {})  # inference on a folder reads no split


def test_class_count_must_match_the_datalist(tmp_path):
    datalist = _datalist(tmp_path, labels={"0": "background", "1": "mitochondria", "2": "synapses"})
    (problem,) = check_datalist(datalist, ["training"], CLASSES)[0]
    assert "lists 3 label values (background, mitochondria, synapses), but class_names has 4" in problem
    assert "--class_names" in problem
    assert check_datalist(datalist, ["training"], ["background", "mito", "syn"])[0] == []  # same count: a warning
    datalist = _datalist(tmp_path / "nolabels", label_max=5)
    (problem,) = check_datalist(datalist, ["training"], CLASSES)[0]
    assert "training_0.tif: holds label value 5, but class_names has 3 foreground classes" in problem


def _items(datalist: Path, split: str) -> list[dict]:
    """A split's items with absolute paths, as a datastore (MONAI Label's) hands them to a run."""
    return [dict(item) for item in load_decathlon_datalist(str(datalist), True, split)]


def test_items_set_by_an_override_are_checked_like_a_datalists(tmp_path):
    datalist = _datalist(tmp_path, n_train=3, label_max=5)
    training = _items(datalist, "training")
    (tmp_path / "images" / "training_1.tif").unlink()
    training.append({"image": str(tmp_path / "images" / "training_2.tif")})  # no label
    problems, counts = check_items({"training": training, "validation": []}, CLASSES, source="the override")
    assert counts == {"training": 4}
    assert problems[0].startswith("the override: item 3 of 'training' needs image and label paths, got {")
    assert problems[1] == "the override: the split 'validation' is empty; it needs at least one image."
    assert problems[2] == (
        "the override: 1 file(s) it names do not exist (paths are relative to the folder the run starts in):\n"
        f"    {tmp_path / 'images' / 'training_1.tif'}"
    )
    assert "training_0.tif: holds label value 5, but class_names has 3 foreground classes" in problems[3]
    assert len(problems) == 4
    (problem,) = check_items({"validation": "images/"}, CLASSES)[0]
    assert "the split 'validation' is not a list of items (str)" in problem
    assert check_items({"validation": _items(datalist, "validation")}, None, labels=False) == ([], {"validation": 1})


def test_read_split_reads_as_monai_and_leaves_an_unreadable_file_to_the_check(tmp_path):
    datalist = _datalist(tmp_path)
    items = read_split(datalist, "training")
    assert isinstance(items, DatalistSplit) and (items.datalist, items.split) == (datalist, "training")
    assert list(items) == load_decathlon_datalist(str(datalist), True, "training")
    for missing in (read_split(tmp_path / "none.json", "training"), read_split(datalist, "test")):
        assert isinstance(missing, DatalistSplit) and list(missing) == []


def test_validate_run_checks_the_items_the_run_reads_from_a_file_or_an_override(tmp_path):
    datalist = _datalist(tmp_path / "data")
    absent = tmp_path / "elsewhere" / "datalist.json"
    common = {"class_names": CLASSES, "head": VALID_HEAD, "sam_allow_random_weights": True, "argv": ["pytest"]}
    # MONAI Label's items: no datalist file is needed, the items are checked
    data = {"training": _items(datalist, "training"), "validation": _items(datalist, "validation")}
    assert validate_run(**common, datalist=absent, data=data)["items"] == {"training": 2, "validation": 1}
    with pytest.raises(ConfigValidationError) as err:
        validate_run(**common, datalist=absent, data={**data, "validation": []})
    override = "the items set by an override (train#dataset#data / validate#dataset#data)"
    assert f"{override}: the split 'validation' is empty; it needs at least one image." in str(err.value)
    # train.yaml's default items: the file they were read from is checked, with its messages
    from_file = {"training": read_split(absent, "training"), "validation": read_split(absent, "validation")}
    with pytest.raises(ConfigValidationError) as err:
        validate_run(**common, datalist=absent, data=from_file)
    assert str(err.value).startswith("the run cannot start, 1 problem(s) found:")
    assert f"datalist not found: {absent}" in str(err.value)
    (tmp_path / "data" / "labels" / "training_0.tif").unlink()
    from_file = {"training": read_split(datalist, "training"), "validation": data["validation"]}
    with pytest.raises(ConfigValidationError) as err:
        validate_run(**common, datalist=absent, data=from_file)
    missing = f"{datalist}: 1 file(s) it names do not exist (paths are relative to the datalist's folder)"
    assert missing in str(err.value)
    # a split the run does not read is not checked, and one that data leaves out comes from the datalist
    checked = validate_run(**common, datalist=datalist, splits=["validation"], data={"training": []})
    assert checked["items"] == {"validation": 1}


def _exception_chain(err: BaseException) -> str:
    messages = []
    while err is not None:
        messages.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(messages)


def test_train_yaml_checks_the_items_an_override_sets_without_a_datalist_file(tmp_path):
    """MONAI Label's BundleTrainTask sets train#dataset#data / validate#dataset#data; dataset_dir has no datalist."""
    datalist = _datalist(tmp_path / "data")
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.yaml", CONFIGS / "demo.yaml"])
    parser.update({"bundle_root": str(REPO / "bundle"), "dataset_dir": str(tmp_path / "no_datalist_here")})
    with pytest.raises(Exception) as err:  # the default: the datalist file, which is missing
        parser.get_parsed_content("startup_checks")
    assert f"datalist not found: {tmp_path / 'no_datalist_here' / 'datalist.json'}" in _exception_chain(err.value)
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.yaml", CONFIGS / "demo.yaml"])
    parser.update({"bundle_root": str(REPO / "bundle"), "dataset_dir": str(tmp_path / "no_datalist_here")})
    parser.update({"train#dataset#data": _items(datalist, "training"), "validate#dataset#data": []})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("startup_checks")
    chain = _exception_chain(err.value)
    assert "the run cannot start, 1 problem(s) found" in chain and "the split 'validation' is empty" in chain
    parser["validate#dataset#data"] = _items(datalist, "validation")
    parser.parse()
    assert parser.get_parsed_content("startup_checks")["items"] == {"training": 2, "validation": 1}


def test_validate_run_lists_every_problem_at_once(tmp_path):
    datalist = _datalist(tmp_path)
    (tmp_path / "labels" / "validation_0.tif").unlink()
    with pytest.raises(ConfigValidationError) as err:
        validate_run(
            class_names=CLASSES,
            head={**VALID_HEAD, "fussion": "concat"},
            datalist=datalist,
            sam_checkpoint=tmp_path / "sam_vit_b_01ec64.pth",
            large_files=LARGE_FILES,
            argv=["pytest"],
        )
    message = str(err.value)
    assert message.startswith("the run cannot start, 3 problem(s) found:")
    assert "head#fussion" in message and "SAM checkpoint not found" in message and "validation_0.tif" in message
    ok = validate_run(class_names=CLASSES, head=VALID_HEAD, datalist=datalist, splits=["training"],
                      sam_allow_random_weights=True, argv=["pytest"])  # fmt: skip
    assert ok == {"items": {"training": 2}, "keys_checked": False}


# ---- in the bundle ------------------------------------------------------------------------------------------


def test_inference_needs_something_to_segment(tmp_path):
    (unset,) = check_input(None)
    assert "nothing to segment: set --input PATH" in unset and "--infer_split" in unset
    (missing,) = check_input(tmp_path / "nope.tif")
    assert f"input not found: {tmp_path / 'nope.tif'}" in missing
    assert check_input(tmp_path) == [] and check_input(tmp_path / "*.tif") == []
    assert check_input("s3://bucket/volume.n5") == []
    with pytest.raises(ConfigValidationError, match="the inference cannot start: nothing to segment"):
        require_input(None)
    require_input(None, split="test")  # a datalist split instead of an input


def test_bundle_run_stops_at_start_with_the_problems(tmp_path):
    _datalist(tmp_path / "data")
    (tmp_path / "data" / "images" / "training_1.tif").unlink()
    overrides = {"dataset_dir": tmp_path / "data", "output_dir": tmp_path / "out", "head#fussion": "concat"}
    result = run_bundle("training", ["train.yaml", "demo.yaml"], overrides, cwd=tmp_path, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the run cannot start, 2 problem(s) found" in output, output[-3000:]
    assert "head#fussion (command line) is not a setting of the head (did you mean 'fusion'?)" in output
    assert "1 file(s) it names do not exist (paths are relative to the datalist's folder):\n    " in output
    assert str(tmp_path / "data" / "images" / "training_1.tif") in output
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_bundle_run_passes_the_check_on_valid_settings(tmp_path):
    _datalist(tmp_path / "data")
    (tmp_path / "checks.yaml").write_text("check_only: \"$print('RUN CHECKED')\"\n")  # a run id that only checks
    configs = ["train.yaml", "demo.yaml", str(tmp_path / "checks.yaml")]
    overrides = {"dataset_dir": tmp_path / "data", "output_dir": tmp_path / "out", "head#fusion": "concat"}
    result = run_bundle("check_only", configs, overrides, cwd=tmp_path, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Run checked: training 2 items, validation 1 items" in output and "RUN CHECKED" in output
    assert "overlay and override keys checked" in output


def test_flags_must_be_booleans_and_the_command_line_word_gets_its_fix():
    from scsam_monai.startup_checks import check_flags

    assert check_flags({"amp": True, "other": False}) == []
    (problem,) = check_flags({"amp": "false"})
    assert "amp must be true or false, got 'false'" in problem and "write --amp False" in problem
    (problem,) = check_flags({"amp": 1})
    assert problem == "amp must be true or false, got 1."
    with pytest.raises(ValueError, match="amp must be true or false, got 'false'"):  # with the run's other problems
        validate_run(class_names=["background", "a"], splits=[], flags={"amp": "false"}, argv=[])


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_the_bundle_checks_amp_before_the_run_starts(config):
    from monai.bundle import ConfigParser

    from scsam_monai.bundle_command import CONFIGS_DIR

    parser = ConfigParser()
    parser.read_config(str(CONFIGS_DIR / config))
    parser["amp"] = "false"  # what `python -m monai.bundle run ... --amp false` sets
    assert parser.get_parsed_content("startup_checks#flags") == {"amp": "false"}
    parser["amp"] = False
    assert parser.get_parsed_content("startup_checks#flags") == {"amp": False}
