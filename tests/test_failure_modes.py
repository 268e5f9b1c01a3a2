"""Failure modes: bad input stops with a message naming the file and the problem, and no file read
by the package can run code.

Readers and the datalist pipeline are fed truncated, corrupt, empty, constant, non-finite, 4D, wrongly typed,
mismatched and out-of-class files; checkpoints that carry a pickled payload must be refused by every loader;
the package source is scanned so that an unsafe load cannot come back; downloads are checked against
``bundle/large_files.yml``. Random inputs are in ``tests/test_fuzz.py``, configuration checks in
``tests/test_validation.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml

from scsam_monai.data.embedding_dataset import precompute_embeddings
from scsam_monai.io.readers import DataPreparationError, open_volume, read_image_2d
from tests.helpers import train_preprocessing

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (40, 48)).astype(np.uint8)


def _tif(path: Path, array: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, array, photometric="minisblack", **kwargs)
    return path


# ---- readers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_names_the_file_and_says_truncated(tmp_path, compression):
    data = _tif(tmp_path / "full.tif", IMAGE, compression=compression).read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataPreparationError, match=r"cut\.tif: cannot read voxels; the file is truncated or corrupt"):
        read_image_2d(tmp_path / "cut.tif")


def test_corrupt_tiff_header_names_the_file(tmp_path):
    data = bytearray(_tif(tmp_path / "full.tif", IMAGE).read_bytes())
    data[4:8] = b"\xff\xff\xff\x7f"  # first IFD offset beyond the end of the file
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    with pytest.raises(DataPreparationError, match=r"bad\.tif: "):
        read_image_2d(tmp_path / "bad.tif")


def test_corrupt_hdf5_structure_is_a_clear_error(tmp_path, monkeypatch):
    """libhdf5 reports a damaged group or heap as RuntimeError/KeyError while listing the datasets."""
    with h5py.File(tmp_path / "cell.h5", "w") as f:
        f["raw"] = IMAGE

    def damaged(self, func):
        raise RuntimeError("Object visitation failed (bad symbol table node signature)")

    monkeypatch.setattr(h5py.File, "visititems", damaged)
    with pytest.raises(DataPreparationError, match=r"cell\.h5: is a corrupt HDF5 file .*bad symbol table"):
        open_volume(tmp_path / "cell.h5")


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_zero_size_image_is_refused(tmp_path, shape):
    _tif(tmp_path / "empty.tif", np.zeros(shape, np.uint8))
    with pytest.raises(DataPreparationError, match=r"empty\.tif: the image is empty"):
        read_image_2d(tmp_path / "empty.tif")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_pixels_are_refused_naming_the_file(tmp_path, bad):
    image = RNG.random((12, 10)).astype(np.float32)
    image[3, 4] = bad
    _tif(tmp_path / "nonfinite.tif", image)
    with pytest.raises(DataPreparationError, match=r"nonfinite\.tif: holds [01] NaN .*\(the first at index \(3, 4\)\)"):
        read_image_2d(tmp_path / "nonfinite.tif")


def test_4d_data_is_refused_where_2d_or_3d_is_expected(tmp_path):
    _tif(tmp_path / "tzyx.tif", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(DataPreparationError, match=r"tzyx\.tif: has 2 non-singleton dimensions besides Y and X"):
        open_volume(tmp_path / "tzyx.tif")
    with h5py.File(tmp_path / "4d.h5", "w") as f:
        f["raw"] = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(DataPreparationError, match=r"4d\.h5 \[raw\]: has 2 non-singleton dimensions"):
        open_volume(tmp_path / "4d.h5")
    _tif(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(DataPreparationError, match=r"stack\.tif: expected a 2D single-channel image"):
        read_image_2d(tmp_path / "stack.tif")


def test_wrong_dtype_is_refused(tmp_path):
    _tif(tmp_path / "complex.tif", np.ones((6, 7), np.complex64))
    with pytest.raises(DataPreparationError, match=r"complex\.tif: has pixels of dtype complex64"):
        read_image_2d(tmp_path / "complex.tif")


def test_header_declaring_a_huge_image_is_refused_before_allocating(tmp_path):
    """A few hundred bytes of HDF5 declaring a 4 TB slice: refused with a message, not an out-of-memory kill."""
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset("raw", shape=(2_000_000, 2_000_000), dtype=np.uint8, chunks=(64, 64))
    assert (tmp_path / "huge.h5").stat().st_size < 10_000
    with pytest.raises(DataPreparationError, match=r"huge\.h5 \[raw\]: .* needs .* GiB, more than half"):
        read_image_2d(tmp_path / "huge.h5")


# ---- the datalist pipeline (precompute) ---------------------------------------------------------------------


class _Encoder(torch.nn.Module):
    """A stand-in encoder: the checks run before any embedding is computed."""

    cache_key = "test-encoder"
    embedding_shape = (4, 2, 2)

    def forward(self, x):
        return torch.zeros(x.shape[0], *self.embedding_shape)

    def input_size(self, h, w):
        return h, w


def _precompute(tmp_path: Path, image: np.ndarray, label: np.ndarray, num_classes: int | None = 3):
    item = {"image": str(_tif(tmp_path / "img.tif", image)), "label": str(_tif(tmp_path / "lab.tif", label))}
    return precompute_embeddings(
        [item],
        cache_dir=tmp_path / "cache",
        preprocessing=train_preprocessing(),
        sam_encoder=_Encoder(),
        progress=False,
        num_classes=num_classes,
    )


LABEL = np.zeros(IMAGE.shape, np.uint8)
LABEL[5:15, 5:20] = 2


def test_valid_item_passes_the_checks(tmp_path):
    (record,) = _precompute(tmp_path, IMAGE, LABEL)
    assert Path(record["sam"]).is_file()


def test_constant_image_is_refused_naming_the_file(tmp_path):
    with pytest.raises(DataPreparationError, match=r"img\.tif: the image is constant"):
        _precompute(tmp_path, np.full(IMAGE.shape, 7, np.uint8), LABEL)
    assert not (tmp_path / "cache").exists()  # nothing cached for a refused item


def test_image_label_shape_mismatch_names_both_files(tmp_path):
    with pytest.raises(
        DataPreparationError, match=r"lab\.tif: label shape \(40, 47\) differs from the image .*img\.tif"
    ):
        _precompute(tmp_path, IMAGE, LABEL[:, :47])


def test_label_values_outside_the_classes_name_the_file(tmp_path):
    label = LABEL.copy()
    label[0, 0] = 7
    with pytest.raises(DataPreparationError, match=r"lab\.tif: holds label values 7 outside 0\.\.3"):
        _precompute(tmp_path, IMAGE, label, num_classes=3)
    negative = LABEL.astype(np.int16)
    negative[1, 1] = -1
    with pytest.raises(DataPreparationError, match=r"lab\.tif: holds label values -1 outside 0 or more"):
        _precompute(tmp_path, IMAGE, negative, num_classes=None)


def test_soft_label_values_are_refused(tmp_path):
    with pytest.raises(DataPreparationError, match=r"lab\.tif: holds label values that are not integers"):
        _precompute(tmp_path, IMAGE, LABEL.astype(np.float32) * 0.4)


def test_nan_image_in_a_datalist_names_the_file_through_monai_compose(tmp_path):
    image = IMAGE.astype(np.float32)
    image[0, 0] = np.nan
    with pytest.raises(DataPreparationError, match=r"img\.tif: holds 1 NaN"):
        _precompute(tmp_path, image, LABEL)


def test_missing_file_in_a_datalist_names_it(tmp_path):
    item = {"image": str(tmp_path / "gone.tif"), "label": str(_tif(tmp_path / "lab.tif", LABEL))}
    with pytest.raises(DataPreparationError, match=r"gone\.tif: file not found"):
        precompute_embeddings([item], cache_dir=tmp_path, preprocessing=train_preprocessing(), sam_encoder=_Encoder())


def test_empty_datalist_is_refused():
    with pytest.raises(DataPreparationError, match="datalist is empty"):
        precompute_embeddings([], cache_dir="unused", preprocessing=train_preprocessing(), sam_encoder=_Encoder())


# ---- untrusted files: nothing read can run code -------------------------------------------------------------


class _Payload:
    """Unpickling this object opens (creates) the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _loaders():
    from monai.handlers import CheckpointLoader

    from scsam_monai.engines.resume import TrainingCheckpoint
    from scsam_monai.networks.checkpoints import load_head_weights, load_mae_checkpoint, load_sam_state_dict

    def monai_loader(path):
        engine = SimpleNamespace(state=SimpleNamespace())
        CheckpointLoader(load_path=str(path), load_dict={"network": torch.nn.Linear(2, 2)})(engine)

    return {
        "sam": load_sam_state_dict,
        "mae": load_mae_checkpoint,
        "head": lambda path: load_head_weights(torch.nn.Linear(2, 2), path),
        "resume": lambda path: TrainingCheckpoint(path, objects={}, resume=True)._load(SimpleNamespace()),
        "monai_checkpoint_loader": monai_loader,
    }


@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_checkpoint_with_a_pickled_payload_runs_no_code(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"image_encoder.weight": torch.zeros(1), "network": _Payload(marker)}, path)
    with pytest.raises(Exception, match=r"(?i)weights.only|unsupported global|cannot"):
        _loaders()[loader](path)
    assert not marker.exists(), f"{loader} executed code from a checkpoint"


_PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "_pickle"}


def _unsafe_calls(path: Path) -> list[str]:
    """Calls that can run code from a file: torch.load without weights_only=True, pickle and friends,
    np.load(allow_pickle=True), yaml.load without a safe loader, pandas.read_pickle."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name.split(".")[0] for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module.split(".")[0])
            found += [f"{where}: imports {n}" for n in names if n in _PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        if name.endswith("torch.load") or name == "load" and "weights_only" in kwargs:
            value = kwargs.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{where}: {ast.unparse(node)} (torch.load needs weights_only=True)")
        if name.endswith(("np.load", "numpy.load")):
            value = kwargs.get("allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}: {ast.unparse(node)} (np.load must not allow pickles)")
        if name.endswith(("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "read_pickle")):
            found.append(f"{where}: {ast.unparse(node)}")
        if name.endswith("yaml.load"):
            loader = ast.unparse(kwargs["Loader"]) if "Loader" in kwargs else ""
            if not loader.endswith(("SafeLoader", "CSafeLoader")):
                found.append(f"{where}: {ast.unparse(node)} (yaml.load needs Loader=yaml.SafeLoader)")
    return found


def test_no_code_path_loads_pickles_or_checkpoints_unsafely():
    files = sorted((REPO / "scsam_monai").rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py"))
    assert len(files) > 20
    found = [line for f in files for line in _unsafe_calls(f)]
    assert not found, "unsafe loads:\n" + "\n".join(found)
    for config in sorted((REPO / "bundle" / "configs").glob("*.yaml")):
        for n, line in enumerate(config.read_text().splitlines(), 1):
            for call in re.findall(r"torch\.load\([^)]*\)", line):
                assert "weights_only=True" in call, f"{config.name}:{n}: {call}"
            assert "pickle" not in line.split("#")[0], f"{config.name}:{n}: {line}"


def test_the_scan_catches_unsafe_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, numpy as np, yaml\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\nnp.load('a', allow_pickle=True)\n"
        "yaml.load(open('a'))\ntorch.load('ok', weights_only=True)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    )
    found = _unsafe_calls(bad)
    assert [int(f.split(":")[1]) for f in found] == [1, 3, 4, 5, 6], found


# ---- downloads are checked against large_files.yml ------------------------------------------------------------


def test_large_files_entries_carry_checkable_sha256_hashes():
    entries = yaml.safe_load((REPO / "bundle" / "large_files.yml").read_text())["large_files"]
    assert entries
    for entry in entries:
        assert entry["hash_type"] in ("md5", "sha1", "sha256", "sha512"), entry
        assert entry["url"].startswith("https://"), entry
        assert re.fullmatch(r"[0-9a-f]{64}", entry["hash_val"]), entry  # the Model Zoo wants a hash for each
    assert {Path(e["path"]).name for e in entries} == {"sam_vit_b_01ec64.pth"}  # only what the default uses


@pytest.mark.parametrize("good_hash", [True, False])
def test_download_large_files_keeps_only_files_with_the_listed_hash(tmp_path, good_hash):
    import hashlib

    from monai.bundle import download_large_files

    source = tmp_path / "server" / "sam_vit_b_01ec64.pth"
    source.parent.mkdir()
    source.write_bytes(b"pretend checkpoint")
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if good_hash else "0" * 64
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    entry = {"path": "models/sam.pth", "url": source.as_uri(), "hash_val": digest, "hash_type": "sha256"}
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    if good_hash:
        download_large_files(bundle_path=str(bundle))
        assert (bundle / "models" / "sam.pth").read_bytes() == b"pretend checkpoint"
    else:
        with pytest.raises((RuntimeError, ValueError), match="hash check of downloaded file failed"):
            download_large_files(bundle_path=str(bundle))
        assert not (bundle / "models" / "sam.pth").exists()
