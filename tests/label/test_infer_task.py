"""The inference task (a MONAI Label ``BundleInferTask``): label maps, the served head, answers 409 and batches.

In process, on the demo profile (tiny random-weight encoders, CPU) with untrained heads: the labels are
meaningless, the plumbing is what is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("monailabel")
itk = pytest.importorskip("itk")
torch = pytest.importorskip("torch")

from fastapi import HTTPException  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402

from scsam_monai.data.preprocessing import PREPROCESSING_KEY, ImagePreprocessing  # noqa: E402
from scsam_monai.io.readers import open_volume  # noqa: E402
from scsam_monai.label.bundle import BundleSettings  # noqa: E402
from scsam_monai.label.infer import ScSAMInferTask, write_label  # noqa: E402

LABEL_NAMES = {"background": 0, "nucleus": 1, "mitochondria": 2, "granules": 3}


@pytest.fixture(scope="module")
def settings() -> BundleSettings:
    return BundleSettings.from_conf({"configs": "demo.yaml", "device": "cpu"})


def _save_head(settings: BundleSettings, path: Path, image_normalization: str | None) -> Path:
    """An untrained head's weights as training writes them (recording ``image_normalization`` unless None)."""
    torch.manual_seed(0)
    head = settings.parser("train.yaml").get_parsed_content("network_def").head
    state = ImagePreprocessing.of(image_normalization or "per_image").attach(head).state_dict()
    if image_normalization is None:
        state.pop(PREPROCESSING_KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    stat = path.stat()  # a new modification time, whatever the file system's clock resolution
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    return path


def _slice(folder: Path, name: str = "slice.tif", shape: tuple[int, ...] = (40, 48)) -> Path:
    rng = np.random.default_rng(3)
    tifffile.imwrite(folder / name, rng.integers(0, 255, shape, dtype=np.uint8), photometric="minisblack")
    return folder / name


def test_label_map_takes_the_geometry_itk_reads_from_the_image(tmp_path):
    image = itk.image_from_array(np.zeros((30, 40), np.float32))
    image.SetSpacing([0.5, 2.0])
    image.SetOrigin([10.0, -3.0])
    itk.imwrite(image, str(tmp_path / "slice.nrrd"))
    label = np.zeros((1, 30, 40), np.uint8)
    label[0, 2:5, 7:9] = 2
    out = write_label(label, tmp_path / "slice.nrrd", tmp_path / "seg.nii.gz")
    written = itk.imread(str(out))
    assert tuple(written.GetSpacing()) == (0.5, 2.0)
    assert tuple(written.GetOrigin()) == (10.0, -3.0)
    np.testing.assert_array_equal(open_volume(out).read(), label)


def test_label_map_of_an_image_itk_cannot_place_gets_the_file_spacing(tmp_path):
    (tmp_path / "odd.xyz").write_bytes(b"not for itk")
    label = np.ones((2, 6, 5), np.uint8)
    out = write_label(label, tmp_path / "odd.xyz", tmp_path / "seg.nii.gz", spacing_zyx=(4.0, None, 0.25))
    written = itk.imread(str(out))
    assert tuple(written.GetSpacing()) == (0.25, 1.0, 4.0)
    np.testing.assert_array_equal(open_volume(out).read(), label)


def test_without_a_head_inference_answers_409_and_serves_the_head_training_writes_later(tmp_path, settings):
    image = _slice(tmp_path)
    model = tmp_path / "model" / "model.pt"
    task = ScSAMInferTask(settings, model)
    assert isinstance(task, BundleInferTask) and task.is_valid()
    assert task.labels == {"nucleus": 1, "mitochondria": 2, "granules": 3}
    assert "model_filename" not in task.config()  # one served head, no choice of the bundle's other files
    with pytest.raises(HTTPException) as caught:
        task({"image": str(image)})
    assert caught.value.status_code == 409 and "train" in caught.value.detail
    _save_head(settings, model, "per_image")  # what a training run (another process) leaves behind
    result, params = task({"image": str(image)})
    assert open_volume(result).shape == (1, 40, 48)
    assert params["label_names"] == LABEL_NAMES and params["shape"] == [1, 40, 48]


def test_a_head_trained_with_another_normalisation_is_refused_until_a_fitting_one_replaces_it(tmp_path, settings):
    image = _slice(tmp_path)
    model = _save_head(settings, tmp_path / "model.pt", "prepared")  # the demo profile normalises per_image
    task = ScSAMInferTask(settings, model)
    with pytest.raises(HTTPException) as caught:
        task({"image": str(image)})
    assert caught.value.status_code == 409
    assert "'prepared'" in caught.value.detail and "'per_image'" in caught.value.detail
    _save_head(settings, model, "per_image")
    result, _ = task({"image": str(image)})
    assert open_volume(result).shape == (1, 40, 48)


def test_a_stack_is_segmented_slice_by_slice_in_batches(tmp_path, settings):
    stack = _slice(tmp_path, "stack.tif", (3, 40, 48))
    model = _save_head(settings, tmp_path / "model.pt", "per_image")
    task = ScSAMInferTask(settings, model, batch_size=2)
    batches: list[tuple[int, ...]] = []
    # the template network BasicInferTask copies to the device; the hook travels with the copy
    task.network.register_forward_pre_hook(lambda module, args: batches.append(tuple(args[0].shape)))
    result, params = task({"image": str(stack), "result_extension": ".nrrd"})
    assert batches == [(2, 1, 40, 48), (1, 1, 40, 48)]
    assert result.endswith(".nrrd")
    label = open_volume(result).read()
    assert label.shape == (3, 40, 48) and params["shape"] == [3, 40, 48]
    assert params["classes_found"] == sorted(np.unique(label).tolist()) and set(params["classes_found"]) <= {0, 1, 2, 3}
    # per_image normalisation: each slice of the stack is segmented as the same slice alone
    alone = tmp_path / "slice_1.tif"
    tifffile.imwrite(alone, tifffile.imread(stack)[1])
    single, _ = task({"image": str(alone)})
    np.testing.assert_array_equal(open_volume(single).read()[0], label[1])


@pytest.mark.parametrize(
    ("request_update", "status"),
    [({"image": "/no/such/file.tif"}, 404), ({"image": ""}, 404), ({"result_extension": ".jpg"}, 422)],
)
def test_requests_that_cannot_be_served_are_answered_before_any_work(tmp_path, settings, request_update, status):
    task = ScSAMInferTask(settings, tmp_path / "model.pt")  # no head: these answers come first
    with pytest.raises(HTTPException) as caught:
        task({"image": str(_slice(tmp_path)), **request_update})
    assert caught.value.status_code == status, caught.value.detail
