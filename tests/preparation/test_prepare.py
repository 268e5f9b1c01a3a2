"""Tests of ``scsam-prepare`` (``scsam_monai.preparation``, ``scsam_monai.cli.prepare``) and the BetaSeg download.

Cells are small volumes the tests write, with masks in the encodings EM data come in: 0/255 TIFF, 1-bit PNG
slices and soft-edged 8-bit PNG slices. The real ssTEM sample in ``../shared/data`` is used when present.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from monai.data import load_decathlon_datalist
from PIL import Image

from scsam_monai.cli.prepare import main as prepare_main
from scsam_monai.cli.prepare import parse_mask
from scsam_monai.io.readers import DataPreparationError, read_image_2d
from scsam_monai.preparation import CellSource, MaskSource, SplitSpec, betaseg, mask_rule, prepare_dataset

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "drosophila-vnc-sstem"
CLASSES = ["nucleus", "mitochondria", "granules"]


def write_tif(path: Path, array: np.ndarray) -> None:
    """A greyscale TIFF stack (tifffile would store a (3, H, W) stack as a planar RGB image)."""
    tifffile.imwrite(path, array, photometric="minisblack")


def write_cell(root: Path, name: str, *, z: int = 6, shape=(20, 24), seed: int = 0) -> dict:
    """A cell: uint16 TIFF stack, nucleus 0/255 TIFF, mitochondria 1-bit PNG slices, granules soft 8-bit PNGs."""
    rng = np.random.default_rng(seed)
    h, w = shape
    folder = root / name
    for sub in ("mito", "granules"):
        (folder / sub).mkdir(parents=True)
    nucleus = np.zeros((z, h, w), bool)
    nucleus[:, 2:10, 2:12] = True
    mito = rng.random((z, h, w)) > 0.85  # overlaps the nucleus here and there
    soft = np.zeros((z, h, w), np.uint8)
    soft[:, 12:18, 14:22] = 200
    soft[:, 11, 14:22] = 90  # anti-aliased edge below half of 255: background
    soft[:, 18, 14:22] = 140  # edge above it: foreground
    image = (rng.normal(20000, 3000, (z, h, w)) + nucleus * 8000).clip(0, 65535).astype(np.uint16)
    write_tif(folder / "image.tif", image)
    write_tif(folder / "nucleus.tif", nucleus.astype(np.uint8) * 255)
    for k in range(z):
        Image.fromarray(mito[k]).save(folder / "mito" / f"{k}.png")
        Image.fromarray(soft[k]).save(folder / "granules" / f"g{k:02d}.png")
    return {
        "name": name,
        "image": folder / "image.tif",
        "masks": {"nucleus": folder / "nucleus.tif", "mitochondria": folder / "mito", "granules": folder / "granules"},
        "fg": {"nucleus": nucleus, "mitochondria": mito, "granules": soft >= 128},
        "array": image,
    }


def cell_args(cell: dict, named: bool = True) -> list[str]:
    args = ["--cell", cell["name"]] if named else []
    args += ["--image", str(cell["image"])]
    return args + [a for c, p in cell["masks"].items() for a in ("--mask", f"{c}={p}")]


def cell_source(cell: dict) -> CellSource:
    return CellSource(cell["name"], cell["image"], masks=[MaskSource(c, p) for c, p in cell["masks"].items()])


def expected_label(fg: dict, classes=CLASSES, first: bool = True) -> np.ndarray:
    label = np.zeros(fg[classes[0]].shape, np.int64)
    order = range(len(classes) - 1, -1, -1) if first else range(len(classes))
    for k in order:
        label[fg[classes[k]]] = k + 1
    return label


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = prepare_main(args + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---- masks, label maps and the manifest ---------------------------------------------------------------------


def test_masks_in_three_encodings_make_one_label_map_and_a_monai_datalist(tmp_path, capsys):
    cell = write_cell(tmp_path, "c1")
    out = tmp_path / "out"
    code, log = run_cli(cell_args(cell) + ["--train-slices", "0:4", "--val-slices", "5:6", "--out", str(out)], capsys)
    assert code == 0, log
    training = load_decathlon_datalist(out / "datalist.json", True, "training")
    validation = load_decathlon_datalist(out / "datalist.json", True, "validation")
    assert [d["slice"] for d in training] == [0, 1, 2, 3] and [d["slice"] for d in validation] == [5]
    label = expected_label(cell["fg"])
    for item in training + validation:
        np.testing.assert_array_equal(read_image_2d(item["label"]), label[item["slice"]])
        image = read_image_2d(item["image"])
        assert image.dtype == np.uint8 and image.shape == (20, 24)
    manifest = json.loads((out / "manifest.json").read_text())
    masks = manifest["cells"][0]["masks"]
    assert masks["nucleus"]["rule"].startswith("auto: two distinct values 0/255")
    assert masks["mitochondria"]["rule"].startswith("auto: two distinct values 0/1")
    assert "value >= 127.5" in masks["granules"]["rule"]
    assert manifest["classes"] == {"0": "background", "1": "nucleus", "2": "mitochondria", "3": "granules"}
    for split, indices in (("training", [0, 1, 2, 3]), ("validation", [5])):
        counts = np.bincount(label[indices].ravel(), minlength=4)
        assert list(manifest["pixel_counts"][split].values()) == counts.tolist()
    assert manifest["cells"][0]["image"]["files"][0]["sha256"] == hashlib.sha256(cell["image"].read_bytes()).hexdigest()
    assert manifest["cells"][0]["overlaps"]["nucleus&mitochondria"] > 0
    window = manifest["cells"][0]["intensity_window"]
    assert window["low"] == pytest.approx(np.percentile(cell["array"][[0, 1, 2, 3, 5]], 0.5))


@pytest.mark.parametrize("overlap", ["first", "last"])
def test_overlap_priority_follows_the_class_order(tmp_path, overlap):
    cell = write_cell(tmp_path, "c1", z=3)
    summary = prepare_dataset(
        [cell_source(cell)],
        tmp_path / "out",
        classes=CLASSES,
        overlap=overlap,
        split=SplitSpec(train_slices=[(0, 2)], val_slices=[(2, 3)]),
        progress=False,
    )
    label = expected_label(cell["fg"], first=overlap == "first")
    assert list(summary["pixel_counts"]["training"].values()) == np.bincount(label[:2].ravel(), minlength=4).tolist()


def test_overlapping_masks_stop_with_overlap_error_and_nothing_is_written(tmp_path):
    cell = write_cell(tmp_path, "c1", z=3)
    with pytest.raises(DataPreparationError, match=r"nucleus\.tif and .*mito.*overlap"):
        prepare_dataset(
            [cell_source(cell)],
            tmp_path / "out",
            overlap="error",
            split=SplitSpec(train_slices=[(0, 2)], val_slices=[(2, 3)]),
            progress=False,
        )
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_mask_rules():
    assert mask_rule(np.uint8, [0, 255]).threshold == 255
    assert mask_rule(bool, [False, True]).threshold == 1
    assert mask_rule(np.uint8, [0, 5, 200]).threshold == 127.5
    assert mask_rule(np.uint16, [0, 9, 70000 // 2]).threshold == 32767.5
    assert mask_rule(np.float32, [0.0, 0.3, 0.9]).threshold == 0.5
    assert mask_rule(np.uint8, [0]).apply(np.array([0, 200])).tolist() == [False, True]
    assert mask_rule(np.uint16, [0, 3, 4], "nonzero").apply(np.array([0, 3])).tolist() == [False, True]
    assert mask_rule(np.uint8, [0, 255], 50.0).apply(np.array([49, 50])).tolist() == [False, True]
    assert parse_mask("mito=a/b.tif:100").threshold == 100.0
    assert parse_mask("mito=a/b.tif:nonzero").threshold == "nonzero"
    assert parse_mask("mito=C:/data/b.tif").path == "C:/data/b.tif"


def test_given_thresholds_and_instance_masks(tmp_path, capsys):
    cell = write_cell(tmp_path, "c1", z=3)
    instances = np.zeros((3, 20, 24), np.uint16)
    instances[:, 12:18, 14:18], instances[:, 12:18, 18:22] = 1, 2  # instance ids 1 and 2
    write_tif(tmp_path / "inst.tif", instances)

    def args(granules: str, out: str) -> list[str]:
        return [
            "--image",
            str(cell["image"]),
            "--mask",
            f"nucleus={cell['masks']['nucleus']}:1",
            "--mask",
            f"granules={granules}",
            "--train-slices",
            "0:2",
            "--val-slices",
            "2:3",
            "--out",
            out,
        ]

    code, log = run_cli(args(f"{tmp_path / 'inst.tif'}:nonzero", str(tmp_path / "a")), capsys)
    assert code == 0, log
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["cells"][0]["masks"]["nucleus"]["rule"] == "given: foreground = value >= 1"
    assert manifest["cells"][0]["masks"]["granules"]["rule"] == "given: foreground = value != 0"
    assert manifest["pixel_counts"]["training"]["granules"] == 2 * 48
    # the default rule misses instance ids below half the uint16 maximum, and a warning says so
    code, log = run_cli(args(str(tmp_path / "inst.tif"), str(tmp_path / "b")), capsys)
    assert code == 0 and "instance label maps need NAME=PATH:nonzero" in log


def test_label_map_with_arbitrary_values(tmp_path, capsys):
    cell = write_cell(tmp_path, "c1", z=3)
    labels = np.zeros((3, 20, 24), np.uint8)
    labels[:, :5], labels[:, 5:8], labels[:, 8:10], labels[:, 10:12] = 3, 191, 192, 7
    write_tif(tmp_path / "labels.tif", labels)
    base = [
        "--image",
        str(cell["image"]),
        "--labels",
        str(tmp_path / "labels.tif"),
        "--classes",
        "nucleus,mito",
        "--train-slices",
        "0:2",
        "--val-slices",
        "2:3",
    ]
    values = ["--label-values", "nucleus=3,mito=191+192"]
    code, log = run_cli(base + values + ["--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "labels.tif: label values 7 of cell 'image'" in log and "nothing was written" in log
    assert not (tmp_path / "a").exists()
    code, log = run_cli(base + values + ["--unmapped", "background", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, log
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["pixel_counts"]["training"] == {
        "background": 2 * 10 * 24,
        "nucleus": 2 * 5 * 24,
        "mito": 2 * 5 * 24,
    }
    assert manifest["cells"][0]["labels"]["label_values"] == {
        "0": "background",
        "3": "nucleus",
        "7": "background",
        "191": "mito",
        "192": "mito",
    }
    code, log = run_cli(base + ["--out", str(tmp_path / "b")], capsys)  # values 0..2 only, without a mapping
    assert code == 2 and "label values 3, 7, 191, 192 of cell 'image' are outside the class list 0..2" in log


# ---- splits -------------------------------------------------------------------------------------------------


def _splits(out: Path, datalist: str = "datalist.json") -> dict[str, set]:
    data = json.loads((out / datalist).read_text())
    return {s: {(d["cell"], d["slice"]) for d in data[s]} for s in ("training", "validation", "test")}


def test_paper_split_trains_on_the_last_cell_and_validates_on_the_others(tmp_path, capsys):
    cells = [write_cell(tmp_path, f"cell{k}", z=3, seed=k) for k in (1, 2, 3)]
    args = [a for c in cells for a in cell_args(c, named=False)] + [
        "--middle-slices",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    code, log = run_cli(args, capsys)  # a new --image starts the next cell; names come from the folders
    assert code == 0, log
    splits = _splits(tmp_path / "o")
    assert splits["training"] == {("cell3_image", 1)}
    assert splits["validation"] == {("cell1_image", 1), ("cell2_image", 1)}


def test_paper_split_with_named_cells_and_test_cells(tmp_path, capsys):
    cells = [write_cell(tmp_path, f"cell{k}", z=3, seed=k) for k in (1, 2, 3, 4)]
    args = [a for c in cells for a in cell_args(c)] + ["--test-cells", "cell4", "--out", str(tmp_path / "o")]
    code, log = run_cli(args, capsys)
    assert code == 0, log
    splits = _splits(tmp_path / "o")
    assert {c for c, _ in splits["training"]} == {"cell3"}
    assert {c for c, _ in splits["validation"]} == {"cell1", "cell2"}
    assert {c for c, _ in splits["test"]} == {"cell4"} and len(splits["test"]) == 3


def test_single_cell_cannot_use_the_paper_split(tmp_path, capsys):
    cell = write_cell(tmp_path, "c1", z=3)
    code, log = run_cli(cell_args(cell) + ["--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "needs at least two cells" in log and not (tmp_path / "o").exists()


def test_explicit_cell_lists_and_kfold_never_share_a_cell(tmp_path, capsys):
    cells = [write_cell(tmp_path, f"c{k}", z=2, seed=k) for k in range(4)]
    args = [a for c in cells for a in cell_args(c)]
    code, log = run_cli(args + ["--train-cells", "c0,c2", "--val-cells", "c3", "--out", str(tmp_path / "e")], capsys)
    assert code == 0, log
    splits = _splits(tmp_path / "e")
    assert {c for c, _ in splits["training"]} == {"c0", "c2"} and {c for c, _ in splits["validation"]} == {"c3"}
    code, log = run_cli(args + ["--train-cells", "c0", "--val-cells", "c0", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "cell 'c0' is in more than one split" in log
    code, log = run_cli(args + ["--folds", "2", "--fold", "1", "--out", str(tmp_path / "k")], capsys)
    assert code == 0, log
    validated = set()
    for fold in (0, 1):
        splits = _splits(tmp_path / "k", f"folds/fold_{fold}.json")
        train_cells, val_cells = {c for c, _ in splits["training"]}, {c for c, _ in splits["validation"]}
        assert not train_cells & val_cells and train_cells | val_cells == {"c0", "c1", "c2", "c3"}
        validated |= val_cells
    assert validated == {"c0", "c1", "c2", "c3"}
    assert _splits(tmp_path / "k") == _splits(tmp_path / "k", "folds/fold_1.json")


def test_slice_ranges_split_one_volume_without_sharing_slices(tmp_path, capsys):
    cell = write_cell(tmp_path, "c1", z=8)
    base = cell_args(cell) + ["--out", str(tmp_path / "o")]
    code, log = run_cli(base + ["--train-slices", "0:4", "--val-slices", "3:6"], capsys)
    assert code == 2 and "slice 3 is in both the training and the validation ranges" in log
    code, log = run_cli(base + ["--train-slices", "0:3,7", "--val-slices", "5", "--test-slices", "6"], capsys)
    assert code == 0, log
    splits = _splits(tmp_path / "o")
    assert {i for _, i in splits["training"]} == {0, 1, 2, 7}
    assert {i for _, i in splits["validation"]} == {5} and {i for _, i in splits["test"]} == {6}
    assert len(list((tmp_path / "o" / "images").iterdir())) == 6  # slices 3 and 4 are in no split


def test_middle_slices_crop_and_downscale(tmp_path):
    cell = write_cell(tmp_path, "c1", z=9, shape=(24, 30))
    cells = [cell_source(cell), cell_source({**cell, "name": "c2"})]
    summary = prepare_dataset(
        cells, tmp_path / "o", middle_slices=5, crop=((2, 22), (3, 27)), downscale=4, progress=False
    )
    manifest = json.loads(summary["manifest"].read_text())
    assert manifest["cells"][1]["slices"] == {"training": [2, 3, 4, 5, 6]}
    item = json.loads(summary["datalist"].read_text())["training"][0]
    label = read_image_2d(tmp_path / "o" / item["label"])
    assert label.shape == read_image_2d(tmp_path / "o" / item["image"]).shape == (5, 6)
    expected = expected_label(cell["fg"])[item["slice"], 2:22, 3:27][2::4, 2::4]
    np.testing.assert_array_equal(label, expected)


def test_other_slicing_axis_float_output_and_absent_class_warning(tmp_path):
    cell = write_cell(tmp_path, "c1", z=4)
    no_granules = {**cell["fg"], "granules": np.zeros((4, 20, 24), bool)}
    write_tif(tmp_path / "empty_mask.tif", np.zeros((4, 20, 24), np.uint8))
    source = cell_source(cell)
    source.masks[2] = MaskSource("granules", tmp_path / "empty_mask.tif")
    split = SplitSpec(train_slices=[(0, 12)], val_slices=[(16, 24)])
    summary = prepare_dataset([source], tmp_path / "o", axis="x", save_dtype="float32", split=split, progress=False)
    assert "class 'granules' has no pixel in the training split." in summary["warnings"]
    data = json.loads(summary["datalist"].read_text())
    item = data["validation"][0]
    assert (item["slice"], item["image"]) == (16, "images/c1_x0016.tif")
    image = read_image_2d(tmp_path / "o" / item["image"])
    assert image.dtype == np.float32 and image.shape == (4, 20) and 0.0 <= image.min() <= image.max() <= 1.0
    expected = expected_label(no_granules)[:, :, 16]  # (Z, Y) planes of the x axis
    np.testing.assert_array_equal(read_image_2d(tmp_path / "o" / item["label"]), expected)


# ---- errors: each names the file, and nothing is written ----------------------------------------------------


def _bad_inputs(tmp_path: Path, case: str) -> list[str]:
    cell = write_cell(tmp_path, "c1", z=3)
    args = cell_args(cell)
    if case == "shape":
        write_tif(tmp_path / "small.tif", np.zeros((3, 20, 23), np.uint8))
        args[args.index(f"nucleus={cell['masks']['nucleus']}")] = f"nucleus={tmp_path / 'small.tif'}"
    elif case == "missing":
        args[args.index(f"nucleus={cell['masks']['nucleus']}")] = f"nucleus={tmp_path / 'gone.tif'}"
    elif case == "constant":
        write_tif(tmp_path / "flat.tif", np.full((3, 20, 24), 9, np.uint16))
        args[args.index(str(cell["image"]))] = str(tmp_path / "flat.tif")
    elif case == "hdf5-key":
        import h5py

        with h5py.File(tmp_path / "cell.h5", "w") as f:
            f["raw"] = cell["array"]
        args[args.index(str(cell["image"]))] = str(tmp_path / "cell.h5")
        args[args.index("--image") + 2 : args.index("--image") + 2] = ["--image-key", "em"]
    elif case == "unreadable":
        (tmp_path / "junk.tif").write_bytes(b"\x00" * 64)
        args[args.index(str(cell["image"]))] = str(tmp_path / "junk.tif")
    elif case == "empty":
        write_tif(tmp_path / "empty.tif", np.zeros((3, 0, 24), np.uint8))
        args[args.index(str(cell["image"]))] = str(tmp_path / "empty.tif")
    elif case == "nan":
        image = cell["array"].astype(np.float32)
        image[1, 3, 3] = np.nan
        write_tif(tmp_path / "nan.tif", image)
        args[args.index(str(cell["image"]))] = str(tmp_path / "nan.tif")
    return args + ["--train-slices", "0:2", "--val-slices", "2:3"]


@pytest.mark.filterwarnings("ignore:.*zero-size array")
@pytest.mark.parametrize(
    "case, message",
    [
        ("shape", r"small\.tif: shape \(3, 20, 23\) differs from the image .*image\.tif \(3, 20, 24\)"),
        ("missing", r"gone\.tif: file not found"),
        ("constant", r"flat\.tif: the volume is constant"),
        ("hdf5-key", r"cell\.h5: has no dataset 'em' \(datasets in the file: raw\)"),
        ("unreadable", r"junk\.tif: cannot be read as a TIFF file"),
        ("empty", r"empty\.tif: .*empty"),
        ("nan", r"nan\.tif: slice 1 along z holds 1 NaN or infinite value"),
    ],
)
def test_bad_input_stops_with_a_message_naming_the_file_and_writes_nothing(tmp_path, capsys, case, message):
    out = tmp_path / "out"
    code, log = run_cli(_bad_inputs(tmp_path, case) + ["--out", str(out)], capsys)
    assert code == 2
    assert __import__("re").search(message, log), log
    assert "nothing was written" in log
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_rerun_replaces_outputs_but_keeps_the_embedding_cache_and_refuses_foreign_folders(tmp_path, capsys):
    cell = write_cell(tmp_path, "c1", z=4)
    out = tmp_path / "o"
    args = cell_args(cell) + ["--out", str(out), "--val-slices", "3"]
    assert run_cli(args + ["--train-slices", "0:3"], capsys)[0] == 0
    (out / "embedding_cache").mkdir()
    (out / "embedding_cache" / "x.npy").write_bytes(b"cached")
    assert run_cli(args + ["--train-slices", "0:2"], capsys)[0] == 0
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 2
    assert len(list((out / "images").iterdir())) == 3  # the old slice 2 is gone
    assert (out / "embedding_cache" / "x.npy").read_bytes() == b"cached"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, log = run_cli(cell_args(cell) + ["--out", str(foreign), "--train-slices", "0:2", "--val-slices", "3"], capsys)
    assert code == 2 and "was not written by scsam-prepare" in log
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_yaml_spec_with_hdf5_masks(tmp_path, capsys):
    import h5py

    cells = []
    for k in range(2):
        cell = write_cell(tmp_path, f"c{k}", z=3, seed=k)
        with h5py.File(tmp_path / f"c{k}.h5", "w") as f:
            f["raw"] = cell["array"]
            for name, fg in cell["fg"].items():
                f[f"labels/{name}"] = fg.astype(np.uint8)
        masks = {n: {"path": f"c{k}.h5", "key": f"labels/{n}"} for n in CLASSES}
        cells.append({"name": f"c{k}", "image": f"c{k}.h5", "image_key": "raw", "masks": masks})
    (tmp_path / "cells.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "cells": cells}))
    code, log = run_cli(["--spec", str(tmp_path / "cells.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, log
    splits = _splits(tmp_path / "o")
    assert {c for c, _ in splits["training"]} == {"c1"} and {c for c, _ in splits["validation"]} == {"c0"}


# ---- BetaSeg ------------------------------------------------------------------------------------------------


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_betaseg_download_offline_stops_at_once_and_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "betaseg"
    with pytest.raises(betaseg.BetaSegUnavailable, match="cannot be reached.*offline.*--archive"):
        betaseg.download_betaseg(out, urlopen=_offline)
    assert not out.exists()
    monkeypatch.setattr(betaseg.urllib.request, "urlopen", _offline)
    assert betaseg.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert betaseg.ARCHIVE_URL in err and betaseg.ARCHIVE_SHA256 in err and "nothing was written" in err
    assert not out.exists()
    assert betaseg.main(["--info"]) == 0 and "betaseg.github.io" in capsys.readouterr().out


def _fake_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "betaseg.zip"
    rng = np.random.default_rng(3)
    with zipfile.ZipFile(archive, "w") as handle:
        for cell in ("high_c1", "high_c2", "low_c1"):
            for suffix in ("_source.tif", *betaseg.MASK_FILES.values()):
                data = rng.integers(0, 255, (3, 8, 8)).astype(np.uint8)
                if suffix != "_source.tif":
                    data = (data > 200).astype(np.uint8)
                path = tmp_path / "tmp.tif"
                write_tif(path, data)
                handle.write(path, f"download/{cell}/{cell}{suffix}")
    return archive


def test_betaseg_archive_installs_cells_and_specs_that_prepare_reads(tmp_path, capsys):
    archive = _fake_archive(tmp_path)
    out = tmp_path / "betaseg"
    with pytest.raises(betaseg.BetaSegUnavailable, match="differs from the expected"):
        betaseg.download_betaseg(out, archive=archive)  # not the real archive: the checksum says so
    assert not out.exists()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    specs = betaseg.download_betaseg(out, archive=archive, sha256=digest)
    assert sorted(p.name for p in specs) == ["betaseg_all.yaml", "betaseg_high.yaml", "betaseg_low.yaml"]
    high = yaml.safe_load((out / "betaseg_high.yaml").read_text())
    assert [c["name"] for c in high["cells"]] == ["high_c1", "high_c2"] and high["classes"] == CLASSES
    code, log = run_cli(["--spec", str(out / "betaseg_high.yaml"), "--out", str(tmp_path / "prepared")], capsys)
    assert code == 0, log
    splits = _splits(tmp_path / "prepared")
    assert {c for c, _ in splits["training"]} == {"high_c2"} and {c for c, _ in splits["validation"]} == {"high_c1"}


# ---- the real ssTEM sample ----------------------------------------------------------------------------------


@pytest.fixture
def sample() -> Path:
    if not (SAMPLE / "raw").is_dir():
        pytest.skip(f"real EM sample not found at {SAMPLE}")
    return SAMPLE


def test_real_sample_label_map_with_label_values(sample, tmp_path, capsys):
    args = [
        "--image",
        str(sample / "raw"),
        "--labels",
        str(sample / "labels"),
        "--classes",
        "mitochondria,synapses,membranes",
        "--label-values",
        "mitochondria=191,synapses=223,membranes=0+32+64+96+128",
        "--unmapped",
        "background",
        "--crop",
        "256:512,256:512",
        "--train-slices",
        "0:3",
        "--val-slices",
        "5:6",
        "--out",
        str(tmp_path / "o"),
    ]
    code, log = run_cli(args, capsys)
    assert code == 0, log
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    files = sorted((sample / "labels").glob("*.png"))
    labels = np.stack([np.asarray(Image.open(files[i]))[256:512, 256:512] for i in (0, 1, 2)])
    expected = {
        "mitochondria": (labels == 191).sum(),
        "synapses": (labels == 223).sum(),
        "membranes": np.isin(labels, [0, 32, 64, 96, 128]).sum(),
    }
    for name, count in expected.items():
        assert manifest["pixel_counts"]["training"][name] == count
    assert manifest["cells"][0]["labels"]["values_seen"] == [0, 32, 64, 96, 128, 159, 191, 223, 255]
