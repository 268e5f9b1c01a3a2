"""Property tests (hypothesis): random bytes and random arrays thrown at every reader and at ``segmentation_scores``.

The contract: a reader returns a valid image or raises our own error (``DataPreparationError`` naming the file;
``ValueError`` with our message from the metrics; problems listed by ``check_datalist``), never another
exception, a crash or a hang. Every call runs in a worker process with a time limit, so a hang or a crash of
a native reader (libtiff, libhdf5, ITK) fails the test with the input that caused it instead of blocking it.

Deterministic by default (the same examples on every run, so CI never fails on a new random draw); set
``SCSAM_FUZZ_EXAMPLES=2000`` to explore with fresh random examples.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

EXAMPLES = int(os.environ.get("SCSAM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 60,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
pytestmark = pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
CALL_TIMEOUT_S = 60  # per reader call; generous for 2 shared CPU cores, a hang still fails


# ---- the worker: every call in a separate process, with a time limit ---------------------------------------


def _task(kind: str, args: tuple) -> tuple:
    """Run one call; return ("ok", summary) or ("error", ours, type name, message)."""
    from scsam_monai.io.readers import DataPreparationError

    try:
        if kind == "volume":
            from scsam_monai.io.readers import open_volume

            with open_volume(*args) as volume:
                array = volume.read()
            return "ok", (array.shape, array.dtype.str)
        if kind == "image2d":
            from scsam_monai.io.readers import read_image_2d

            array = read_image_2d(*args)
            return "ok", (array.shape, array.dtype.str, array.tobytes())
        if kind == "datalist":
            from scsam_monai.startup_checks import check_datalist

            problems, counts = check_datalist(*args)
            return "ok", (problems, counts)
        if kind == "spec":
            from scsam_monai.preparation import load_cells_spec

            cells, _ = load_cells_spec(*args)
            return "ok", len(cells)
        if kind == "cached":
            from scsam_monai.data.transforms import LoadCachedArrayd

            out = LoadCachedArrayd(keys="x")({"x": args[0]})
            return "ok", tuple(out["x"].shape)
        if kind == "scores":
            from scsam_monai.metrics import segmentation_scores

            scores = segmentation_scores(*args)
            return "ok", sorted(scores)
        raise AssertionError(kind)
    except DataPreparationError as err:
        return "error", True, type(err).__name__, str(err)
    except ValueError as err:  # ours only if the message is one of ours (checked by the test)
        return "error", kind in ("scores", "cached"), type(err).__name__, str(err)
    except Exception as err:  # noqa: BLE001 - reported to the test as a foreign exception
        return "error", False, type(err).__name__, f"{err}\n{traceback.format_exc()}"


def _serve(conn) -> None:
    import logging
    import warnings

    logging.disable(logging.CRITICAL)  # tifffile and ITK log every malformed tag
    warnings.simplefilter("ignore")
    while True:
        request = conn.recv()
        if request is None:
            return
        conn.send(_task(*request))


class Worker:
    """A process that runs reader calls; a call that does not answer within the limit fails the test."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()

    def __call__(self, kind: str, *args) -> tuple:
        self.conn.send((kind, args))
        if not self.conn.poll(CALL_TIMEOUT_S):
            self.process.kill()
            self._start()
            pytest.fail(f"{kind}{args!r:.300} did not return within {CALL_TIMEOUT_S} s (a hang)")
        try:
            return self.conn.recv()
        except EOFError:
            code = self.process.exitcode
            self._start()
            pytest.fail(f"{kind}{args!r:.300} crashed the process (exit code {code})")

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _assert_ours(result: tuple, what: str) -> None:
    if result[0] == "error":
        _, ours, name, message = result
        assert ours, f"{what} raised {name}, not our error:\n{message}"


# ---- seed files of every format, to mutate -----------------------------------------------------------------


def _seed_files() -> dict[str, bytes]:
    import tempfile

    import h5py
    import itk
    import nibabel as nib
    import tifffile
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 255, (12, 10)).astype(np.uint8)
    seeds: dict[str, bytes] = {}
    for suffix, write in {
        ".tif": lambda b: tifffile.imwrite(b, image, photometric="minisblack"),
        ".tiff": lambda b: tifffile.imwrite(b, image, compression="zlib", photometric="minisblack"),
        ".png": lambda b: Image.fromarray(image).save(b, format="PNG"),
        ".jpg": lambda b: Image.fromarray(image).save(b, format="JPEG"),
        ".bmp": lambda b: Image.fromarray(image).save(b, format="BMP"),
    }.items():
        buffer = io.BytesIO()
        write(buffer)
        seeds[suffix] = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        with h5py.File(Path(tmp) / "a.h5", "w") as f:
            f["raw"] = image
        seeds[".h5"] = (Path(tmp) / "a.h5").read_bytes()
        for suffix in (".nii", ".nii.gz"):
            nib.save(nib.Nifti1Image(image, np.eye(4)), Path(tmp) / f"a{suffix}")
            seeds[suffix] = (Path(tmp) / f"a{suffix}").read_bytes()
        for suffix in (".mha", ".nrrd"):
            itk.imwrite(itk.image_from_array(image), str(Path(tmp) / f"a{suffix}"))
            seeds[suffix] = (Path(tmp) / f"a{suffix}").read_bytes()
    return seeds


SEEDS = _seed_files()


@st.composite
def _damaged_files(draw) -> tuple[str, bytes]:
    """A seed file of a random format, damaged: bytes replaced, truncated, or entirely random."""
    suffix = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[suffix])
    how = draw(st.sampled_from(["flip", "truncate", "random", "flip+truncate"]))
    if how == "random":
        return suffix, draw(st.binary(max_size=1024))
    if "flip" in how:
        for position, value in draw(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1)):
            data[position % len(data)] = value
    if "truncate" in how:
        data = data[: draw(st.integers(0, len(data)))]
    return suffix, bytes(data)


@FUZZ
@given(_damaged_files())
def test_damaged_files_of_every_format_raise_only_our_error(worker, folder, case):
    suffix, data = case
    path = folder / f"damaged{suffix}"
    path.write_bytes(data)
    for kind in ("volume", "image2d"):
        result = worker(kind, str(path))
        _assert_ours(result, f"{kind} of a damaged {suffix} ({len(data)} bytes)")
        if result[0] == "error":
            assert str(path) in result[3], result[3]  # the message names the file


@FUZZ
@given(st.sampled_from(["n5", "zarr2", "zarr3"]), st.binary(max_size=300) | st.from_type(dict).map(json.dumps))
def test_damaged_container_metadata_raises_only_our_error(worker, folder, kind, metadata):
    root = folder / f"container.{kind[:4]}"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        old.unlink()
    name = {"n5": "attributes.json", "zarr2": ".zarray", "zarr3": "zarr.json"}[kind]
    (root / name).write_bytes(metadata.encode() if isinstance(metadata, str) else metadata)
    _assert_ours(worker("volume", str(root)), f"{kind} metadata {metadata!r:.100}")


_DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64", "bool", "complex64"]


@FUZZ
@given(
    hnp.arrays(
        dtype=st.sampled_from(_DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=5),
    ),
    st.sampled_from(["tif", "h5", "nii"]),
)
def test_random_arrays_read_back_exactly_or_raise_our_error(worker, folder, array, fmt):
    """Any array written in any layout: 2D images of a usable dtype come back exactly, the rest is refused."""
    path = folder / f"array.{fmt}"
    try:
        if fmt == "tif":
            import tifffile

            tifffile.imwrite(path, array, photometric="minisblack")
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "w") as f:
                f["raw"] = array
        else:
            import nibabel as nib

            nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    except Exception:  # noqa: BLE001 - the writer refuses this array: nothing to read
        hypothesis.assume(False)
    result = worker("image2d", str(path))
    _assert_ours(result, f"image2d of {array.dtype} {array.shape} in {fmt}")
    squeezed = array.reshape([s for s in array.shape if s != 1]) if array.ndim > 2 else array
    usable = (
        squeezed.ndim == 2
        and squeezed.size > 0
        and array.dtype.kind in "biuf"
        and (array.dtype.kind != "f" or np.isfinite(array).all())
    )
    if result[0] == "ok":
        shape, dtype, data = result[1]
        assert len(shape) == 2 and np.dtype(dtype).kind in "biuf"
        read = np.frombuffer(data, dtype=dtype).reshape(shape)
        assert np.isfinite(read).all() if read.dtype.kind == "f" else True
        if usable and fmt != "nii" and array.ndim == 2:
            expected = squeezed.astype(np.uint8) if array.dtype == bool else squeezed
            np.testing.assert_array_equal(read, expected)
    else:
        assert not usable or fmt == "nii" or array.ndim > 2, f"a valid {array.dtype} {array.shape} was refused"


@FUZZ
@given(
    st.binary(max_size=400)
    | st.recursive(
        st.none() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["training", "validation", "image", "label", "labels", "0"]), c, max_size=3
            )
        ),
        max_leaves=12,
    ).map(json.dumps)
)  # noqa: E501
def test_random_datalists_give_problems_not_exceptions(worker, folder, content):
    path = folder / "datalist.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    result = worker("datalist", str(path), ["training", "validation"], ["background", "a", "b"])
    assert result[0] == "ok", f"check_datalist raised {result[2]}: {result[3]}"


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=200))
def test_random_cell_specs_and_cached_arrays_raise_only_our_error(worker, folder, content):
    data = content.encode() if isinstance(content, str) else content
    (folder / "cells.yaml").write_bytes(data)
    _assert_ours(worker("spec", str(folder / "cells.yaml")), f"cell spec {data!r:.100}")
    (folder / "cached.npy").write_bytes(b"\x93NUMPY" + data if data[:1] == b"\x01" else data)
    result = worker("cached", str(folder / "cached.npy"))
    _assert_ours(result, f"cached array {data!r:.100}")
    if result[0] == "error":
        assert "cannot read cached array" in result[3], result[3]


_SCORE_MESSAGES = re.compile(r"^(Image \d+: |Got \d+ predictions but \d+ labels|num_classes must be)")


@FUZZ
@given(
    st.lists(
        hnp.arrays(
            dtype=st.sampled_from(["uint8", "int64", "int8", "float32", "float64", "bool", "complex64"]).map(np.dtype),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
        ),
        max_size=4,
    ),
    st.integers(0, 4),
    st.one_of(st.integers(-2, 6), st.just(10**9), st.floats(allow_nan=True), st.just(True), st.none()),
)
def test_segmentation_scores_on_random_arrays_returns_or_raises_our_value_error(worker, arrays, n_pred, num_classes):
    pred, label = arrays[:n_pred], arrays[n_pred:]
    result = worker("scores", pred, label, num_classes)
    if result[0] == "error":
        _, _, name, message = result
        assert name == "ValueError" and _SCORE_MESSAGES.match(message), f"{name}: {message}"


@FUZZ
@given(st.integers(1, 5), st.data())
def test_segmentation_scores_on_valid_random_maps_lie_in_zero_one(worker, num_classes, data):
    shape = data.draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    maps = hnp.arrays(np.int64, shape, elements=st.integers(0, num_classes))
    n = data.draw(st.integers(1, 3))
    pred, label = [data.draw(maps) for _ in range(n)], [data.draw(maps) for _ in range(n)]
    result = worker("scores", pred, label, num_classes)
    assert result[0] == "ok", result
    from scsam_monai.metrics import segmentation_scores

    scores = segmentation_scores(pred, label, num_classes)
    for key in ("challenge_iou", "iou", "mc_iou", "miou", "aji", "dice_mean"):
        assert np.isnan(scores[key]) or 0.0 <= scores[key] <= 1.0, (key, scores[key])
