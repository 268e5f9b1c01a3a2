"""The inference task's pieces: the label map's geometry, and the answer when no head has been trained."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("monailabel")
itk = pytest.importorskip("itk")

from fastapi import HTTPException  # noqa: E402

from scsam_monai.data.readers import open_volume  # noqa: E402
from scsam_monai.label.bundle import BundleSettings  # noqa: E402
from scsam_monai.label.infer import ScSAMInferTask, write_label  # noqa: E402


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


def test_without_a_trained_head_inference_answers_409(tmp_path):
    tifffile.imwrite(tmp_path / "slice.tif", np.zeros((32, 32), np.uint8))
    task = ScSAMInferTask(BundleSettings.from_conf({"configs": "demo.yaml"}), tmp_path / "model" / "model.pt")
    assert task.labels == {"nucleus": 1, "mitochondria": 2, "granules": 3}
    with pytest.raises(HTTPException) as caught:
        task({"image": str(tmp_path / "slice.tif")})
    assert caught.value.status_code == 409 and "train" in caught.value.detail
