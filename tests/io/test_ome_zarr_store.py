"""Tests of the multi-process OME-Zarr label store (``scsam_monai.io.writers.ome_zarr_store``): what it writes is
read back with zarr-python (a reader that is not ours) and with ``open_volume``."""

from __future__ import annotations

import ast
import errno
import json
import multiprocessing
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

import scsam_monai.io.writers.ome_zarr_store as store_module
from scsam_monai.io.readers import open_volume
from scsam_monai.io.writers.ome_zarr_store import (
    OmeZarrLabelStore,
    StoreMismatchError,
    StoreWriteError,
    downsample_labels,
    pyramid_shapes,
)

SHAPE = (5, 300, 2500)  # 2500 wide: three levels (2500, 1250, 625)
CLASSES = ["background", "nucleus", "mitochondria", "granule"]
RUN = {"weights": "sha256:abc", "preprocessing": {"window": [0.5, 99.5]}, "tiling": {"tile": 1024, "overlap": 64}}
OPTIONS = dict(shape_zyx=SHAPE, spacing_zyx=(30.0, 4.0, 4.0), unit="nm", class_names=CLASSES, run=RUN)


def _volume(seed: int = 0) -> np.ndarray:
    """Blobs of 10 x 10 pixels (so coarser levels mix labels) with 5 % salt (ties in the 2 x 2 modes)."""
    rng = np.random.default_rng(seed)
    z, y, x = SHAPE
    blobs = rng.integers(0, len(CLASSES), (z, y // 10 + 1, x // 10 + 1)).repeat(10, 1).repeat(10, 2)[:, :y, :x]
    salt = rng.random(SHAPE) < 0.05
    blobs[salt] = rng.integers(0, len(CLASSES), int(salt.sum()))
    return blobs.astype(np.uint8)


def _probabilities(labels: np.ndarray) -> np.ndarray:
    """(C, Y, X) float32 of one slice: 0.7 on its label, the rest shared (compresses well, unlike noise)."""
    one_hot = (labels[None] == np.arange(len(CLASSES))[:, None, None]).astype(np.float32)
    return one_hot * 0.6 + 0.1


def _pyramid(plane: np.ndarray) -> list[np.ndarray]:
    levels = [plane]
    for _ in pyramid_shapes(plane.shape)[1:]:
        levels.append(downsample_labels(levels[-1]))
    return levels


def _chunk_files(path: Path) -> set[str]:
    """Keys (``<array>/<z>/<cy>/<cx>``) of every chunk file on disk, in every array of the store."""
    found = set()
    for root, _, files in os.walk(path):
        if ".zarray" in files:
            array = Path(root).relative_to(path).as_posix()
            for sub, _, chunks in os.walk(root):
                found |= {f"{array}/{(Path(sub) / c).relative_to(root).as_posix()}" for c in chunks if c[0] != "."}
    return found


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


# ---- pyramid and downsampling -------------------------------------------------------------------------------


def test_pyramid_halves_while_the_longest_side_exceeds_the_minimum():
    assert pyramid_shapes((300, 1024)) == [(300, 1024)]
    assert pyramid_shapes((2048, 2048)) == [(2048, 2048), (1024, 1024)]
    assert pyramid_shapes((4096, 100)) == [(4096, 100), (2048, 50), (1024, 25)]
    assert pyramid_shapes((300, 2500)) == [(300, 2500), (150, 1250), (75, 625)]
    assert pyramid_shapes((5, 9), min_side=3) == [(5, 9), (3, 5), (2, 3)]


def test_downsample_takes_the_block_mode_and_breaks_ties_to_the_smallest_nonzero_label():
    labels = np.array(
        [
            [1, 1, 0, 3, 2, 3, 0, 0, 4],
            [1, 0, 3, 0, 3, 2, 0, 0, 4],
            [5, 6, 7, 7, 0, 2, 9, 8, 0],
        ],
        np.uint8,
    )
    expected = np.array(
        [
            [1, 3, 2, 0, 4],  # mode 1; tie 0/3 -> 3; tie 2/3 -> 2; all background; partial column: 4
            [5, 7, 2, 8, 0],  # partial row: tie 5/6 -> 5; 7; tie 0/2 -> 2; tie 8/9 -> 8; lone 0
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(downsample_labels(labels), expected)
    np.testing.assert_array_equal(downsample_labels(np.array([[7]], np.uint16)), [[7]])
    assert downsample_labels(labels.astype(np.uint16)).dtype == np.uint16
    with pytest.raises(ValueError, match="uint8 or uint16"):
        downsample_labels(labels.astype(np.int32))


def _slow_mode(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(((labels.shape[0] + 1) // 2, (labels.shape[1] + 1) // 2), labels.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = labels[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel().tolist()
            top = max(block.count(v) for v in block)
            tied = sorted({v for v in block if block.count(v) == top})
            out[i, j] = next((v for v in tied if v != 0), tied[0])
    return out


@pytest.mark.parametrize("shape", [(31, 17), (16, 20)])
def test_downsample_matches_a_slow_reference_on_random_labels(shape):
    rng = np.random.default_rng(1)
    for dtype, top in ((np.uint8, 4), (np.uint16, 65535)):
        labels = rng.integers(0, top, shape, endpoint=True).astype(dtype)
        labels[rng.random(shape) < 0.3] = 0
        np.testing.assert_array_equal(downsample_labels(labels), _slow_mode(labels))


# ---- layout, read back by zarr-python and by open_volume ----------------------------------------------------


def test_store_reads_back_with_zarr_python_as_an_ngff_label_pyramid(tmp_path):
    path = tmp_path / "cell_seg.zarr"
    volume = _volume()
    store = OmeZarrLabelStore.open(path, **OPTIONS, translation_zyx=(60.0, 400.0, 800.0), chunk_yx=256)
    for z in range(SHAPE[0]):
        store.write_slice(z, volume[z])
    store.finish()
    assert store.complete and store.levels == [(5, 300, 2500), (5, 150, 1250), (5, 75, 625)]

    root = zarr.open_group(str(path), mode="r")
    levels = [np.stack(level) for level in zip(*(_pyramid(plane) for plane in volume), strict=True)]
    for k, (y, x) in enumerate(pyramid_shapes(SHAPE[1:])):
        array = root[str(k)]
        assert array.shape == (5, y, x) and array.dtype == np.uint8
        assert array.chunks == (1, min(256, y), min(256, x))
        np.testing.assert_array_equal(array[:], levels[k])
    (multiscale,) = root.attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    assert multiscale["axes"] == [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2"]
    for k, dataset in enumerate(multiscale["datasets"]):
        scale, translation = dataset["coordinateTransformations"]
        assert scale == {"type": "scale", "scale": [30.0, 4.0 * 2**k, 4.0 * 2**k]}
        shift = (2**k - 1) / 2 * 4.0  # the centre of a level-k pixel: (2^k - 1) / 2 level-0 pixels in
        assert translation == {"type": "translation", "translation": [60.0, 400.0 + shift, 800.0 + shift]}
    label = root.attrs["image-label"]
    assert [p["class"] for p in label["properties"]] == CLASSES
    assert [c["label-value"] for c in label["colors"]] == [0, 1, 2, 3]
    assert label["colors"][2]["rgba"] == [227, 26, 28, 255]  # palette: mitochondria red

    with open_volume(path) as read:
        assert read.shape == SHAPE and read.dtype == np.uint8
        assert read.spacing == pytest.approx((30.0, 4.0, 4.0)) and read.unit == "nanometer"
        np.testing.assert_array_equal(read.read_slice(3), volume[3])


def test_store_module_never_imports_zarr():
    tree = ast.parse(Path(store_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.split(".")[0] == "zarr"}


def test_probabilities_are_float32_arrays_per_foreground_class(tmp_path):
    path = tmp_path / "cell_seg.zarr"
    volume = _volume()[:, :40, :50]
    options = {**OPTIONS, "shape_zyx": (5, 40, 50)}
    store = OmeZarrLabelStore.open(path, **options, probabilities=True, chunk_yx=32)
    probabilities = [_probabilities(plane) for plane in volume]
    for z in range(5):
        given = probabilities[z] if z % 2 else probabilities[z][1:]  # (C, Y, X) or foreground only
        store.write_slice(z, volume[z], given)
    with pytest.raises(ValueError, match=r"slice 0 needs \(4, 40, 50\) probabilities"):
        store.write_slice(0, volume[0], probabilities[0][:2])
    with pytest.raises(ValueError, match="opened with probabilities"):
        store.write_slice(0, volume[0])

    root = zarr.open_group(str(path), mode="r")
    assert sorted(root["probabilities"].group_keys()) == sorted(CLASSES[1:])
    for c, name in enumerate(CLASSES[1:], start=1):
        group = root["probabilities"][name]
        assert group.attrs["multiscales"][0]["datasets"][0]["path"] == "0"
        array = group["0"]
        assert array.shape == (5, 40, 50) and array.dtype == np.float32 and array.chunks == (1, 32, 32)
        np.testing.assert_array_equal(array[:], np.stack([p[c] for p in probabilities]))
    assert store.completed() == set(range(5))


def test_write_slice_rejects_wrong_shapes_indices_and_labels_naming_store_and_slice(tmp_path):
    path = tmp_path / "cell_seg.zarr"
    store = OmeZarrLabelStore.open(path, **{**OPTIONS, "shape_zyx": (3, 8, 8)})
    where = re.escape(str(path))
    with pytest.raises(ValueError, match=rf"{where}: slice 1 needs \(8, 8\) integer labels"):
        store.write_slice(1, np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=rf"{where}: slice 3 is outside the store's 0..2"):
        store.write_slice(3, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=rf"{where}: slice 2 holds labels 4..4; the store's classes are 0..3"):
        store.write_slice(2, np.full((8, 8), 4, np.uint8))
    with pytest.raises(ValueError, match="opened without probabilities"):
        store.write_slice(0, np.zeros((8, 8), np.uint8), np.zeros((4, 8, 8), np.float32))
    assert store.completed() == set()


# ---- several ranks ------------------------------------------------------------------------------------------


def _rank_main(path: str, rank: int, world: int, barrier, report: str) -> None:
    """One rank of a two-process run: records every array write it makes, writes its slices, finishes on 0."""
    written = []
    original = OmeZarrLabelStore._write_array

    def recording(self, key, z, plane):
        written.append((key, z, plane.shape, _chunk_shape(self, key)))
        return original(self, key, z, plane)

    OmeZarrLabelStore._write_array = recording
    store = OmeZarrLabelStore.open(
        path, **OPTIONS, probabilities=True, rank=rank, world_size=world, barrier=lambda: barrier.wait(60)
    )
    volume = _volume()
    for z in store.pending(range(rank, SHAPE[0], world)):
        store.write_slice(z, volume[z], _probabilities(volume[z]))
    barrier.wait(60)
    if rank == 0:
        store.finish()
    Path(report).write_text(json.dumps(written))


def _chunk_shape(store, key):
    return list(store._arrays[key].chunk_layout.read_chunk.shape)


def _chunks_written(record) -> set[str]:
    keys = set()
    for key, z, (y, x), (_, cy, cx) in record:
        keys |= {f"{key}/{z}/{i}/{j}" for i in range(-(-y // cy)) for j in range(-(-x // cx))}
    return keys


def test_two_processes_write_interleaved_slices_like_one_writer_and_never_share_a_chunk(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    path = tmp_path / "two_seg.zarr"
    reports = [tmp_path / f"rank{r}.json" for r in range(2)]
    ranks = [context.Process(target=_rank_main, args=(str(path), r, 2, barrier, str(reports[r]))) for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(120)
    assert [p.exitcode for p in ranks] == [0, 0]

    single = tmp_path / "one_seg.zarr"
    store = OmeZarrLabelStore.open(single, **OPTIONS, probabilities=True)
    volume = _volume()
    for z in range(SHAPE[0]):
        store.write_slice(z, volume[z], _probabilities(volume[z]))
    assert OmeZarrLabelStore.open(path, **OPTIONS, probabilities=True).complete
    two, one = zarr.open_group(str(path), mode="r"), zarr.open_group(str(single), mode="r")
    arrays = [str(k) for k in range(3)] + [f"probabilities/{n}/0" for n in CLASSES[1:]]
    for key in arrays:
        np.testing.assert_array_equal(two[key][:], one[key][:])
    assert two.attrs["multiscales"][0]["datasets"] == one.attrs["multiscales"][0]["datasets"]

    records = [json.loads(r.read_text()) for r in reports]
    for rank, record in enumerate(records):  # whole slices of its own, one slice per chunk, at every array
        assert {z for _, z, _, _ in record} == set(range(rank, SHAPE[0], 2))
        assert sorted({key for key, _, _, _ in record}) == sorted(arrays)
        assert all(chunk[0] == 1 for _, _, _, chunk in record)
    chunks = [_chunks_written(record) for record in records]
    assert not chunks[0] & chunks[1]
    assert chunks[0] | chunks[1] == _chunk_files(path)  # nothing on disk that no rank accounts for


def test_a_failure_on_rank_0_releases_the_other_ranks_which_fail_the_same_way(tmp_path):
    path = tmp_path / "cell_seg.zarr"
    path.mkdir()
    (path / "notes.txt").write_text("user data")
    barrier = threading.Barrier(2, timeout=10)
    errors = [None, None]

    def rank(r):
        try:
            OmeZarrLabelStore.open(path, **OPTIONS, rank=r, world_size=2, barrier=barrier.wait)
        except Exception as err:  # noqa: BLE001 - recorded for the assertions
            errors[r] = err

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [type(e) for e in errors] == [StoreMismatchError, StoreMismatchError]
    assert not barrier.broken and os.listdir(path) == ["notes.txt"]


# ---- resume, mismatch, failures, finish ---------------------------------------------------------------------


def test_a_rerun_with_the_same_run_resumes_and_another_run_is_refused_with_every_change(tmp_path):
    path = tmp_path / "cell_seg.zarr"
    volume = _volume()
    store = OmeZarrLabelStore.open(path, **OPTIONS)
    store.write_slice(0, volume[0])
    store.write_slice(1, volume[1])

    again = OmeZarrLabelStore.open(path, **{**OPTIONS, "run": json.loads(json.dumps(RUN))})
    assert again.completed() == {0, 1}
    assert again.pending(range(5)) == [2, 3, 4] and again.pending([4, 1, 3]) == [4, 3]
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][1], volume[1])

    before = _snapshot(path)
    changed = {**RUN, "weights": "sha256:def", "tiling": {"tile": 512, "overlap": 64}, "roi": [0, 10]}
    with pytest.raises(StoreMismatchError) as caught:
        OmeZarrLabelStore.open(path, **{**OPTIONS, "run": changed, "shape_zyx": (6, 300, 2500)})
    message = str(caught.value)
    assert str(path) in message and "another --output_dir" in message and "delete the store" in message
    assert 'run.weights: "sha256:abc" -> "sha256:def"' in message
    assert "run.tiling.tile: 1024 -> 512" in message and "run.roi: (absent) -> [0, 10]" in message
    assert "shape_zyx: [5, 300, 2500] -> [6, 300, 2500]" in message and "overlap" not in message
    assert _snapshot(path) == before


@pytest.mark.parametrize("kind", ["folder", "old writer's image", "file"])
def test_a_path_that_is_not_our_store_is_refused_and_left_untouched(tmp_path, kind):
    path = tmp_path / "cell_seg.zarr"
    if kind == "file":
        path.write_text("not a store")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("user data")
        if kind == "old writer's image":
            (path / ".zgroup").write_text('{"zarr_format": 2}')
            (path / ".zattrs").write_text('{"multiscales": []}')
    before = _snapshot(path) if path.is_dir() else path.read_text()
    with pytest.raises(StoreMismatchError, match="is not a ScSAM label store.*left untouched"):
        OmeZarrLabelStore.open(path, **OPTIONS)
    assert (_snapshot(path) if path.is_dir() else path.read_text()) == before


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        ValueError("Error writing local file \"x/0/2/0/0\": No space left on device [os_error_code='28']"),
        ValueError("Error writing local file \"x/0/2/0/0\": [os_error_code='28']"),
    ],
    ids=["oserror", "tensorstore", "tensorstore-without-text"],
)
def test_a_failed_write_names_store_slice_and_cause_and_is_not_marked(tmp_path, monkeypatch, failure):
    path = tmp_path / "cell_seg.zarr"
    volume = _volume()
    store = OmeZarrLabelStore.open(path, **OPTIONS)
    original = OmeZarrLabelStore._write_array

    def full_disk(self, key, z, plane):
        if key == "1":  # level 0 starts, the next level fails
            raise failure
        return original(self, key, z, plane)

    monkeypatch.setattr(OmeZarrLabelStore, "_write_array", full_disk)
    with pytest.raises(StoreWriteError) as caught:
        store.write_slice(2, volume[2])
    message = str(caught.value)
    assert message.startswith(f"{path}: slice 2 could not be written (")
    assert "No space left on device" in message and "rerun the same command" in message
    assert caught.value.errno == errno.ENOSPC and caught.value.__cause__ is failure
    assert 2 not in store.completed()

    monkeypatch.setattr(OmeZarrLabelStore, "_write_array", original)
    store.write_slice(2, volume[2])
    assert store.completed() == {2}
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["1"][2], _pyramid(volume[2])[1])

    monkeypatch.setattr(OmeZarrLabelStore, "_write_array", full_disk)  # a complete slice written again, failing
    with pytest.raises(StoreWriteError):
        store.write_slice(2, volume[2])
    assert store.completed() == set()


def test_finish_refuses_missing_slices_then_records_the_store_complete(tmp_path):
    path = tmp_path / "cell_seg.zarr"
    volume = _volume()
    store = OmeZarrLabelStore.open(path, **OPTIONS)
    for z in (0, 2, 3):
        store.write_slice(z, volume[z])
    with pytest.raises(RuntimeError, match=r"2 of 5 slices are not complete \(first: 1, 4\)"):
        store.finish()
    assert not store.complete
    store.write_slice(1, volume[1])
    store.write_slice(4, volume[4])
    store.finish()
    record = json.loads((path / ".scsam" / "run.json").read_text())
    assert store.complete and record["complete"] is True and record["finished"]
    assert record["run"] == RUN and record["shape_zyx"] == list(SHAPE) and record["class_names"] == CLASSES


def test_downsampling_in_bands_equals_the_whole_map_at_once():
    """A tall map is downsampled in bands of rows (bounded memory); the bands must not change a single block."""
    from scsam_monai.io.writers.ome_zarr_store import _DOWNSAMPLE_BAND, _downsample_band

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, (2 * _DOWNSAMPLE_BAND + 77, 301)).astype(np.uint8)
    np.testing.assert_array_equal(downsample_labels(labels), _downsample_band(labels))
