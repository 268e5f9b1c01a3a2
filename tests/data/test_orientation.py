"""One slice loader and one preprocessing: a non-square, asymmetric image keeps its orientation through every path.

MONAI's ``LoadImage`` returns a 2D image transposed (W, H); a model trained on slices read one way and served
slices read the other would see every slice transposed. Every path that reads image files reads them with
``LoadEMImaged`` and normalises them with the model's ``ImagePreprocessing``: training (``train.yaml``), the
bundle's transform chain (``inference.yaml``: what MONAI Label's stock app and the Model Zoo tools run), the
bundle's own inference job (``run inference``), the MONAI Label app's streaming inference and the MAE
pre-training's loader.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser

from scsam_monai.bundle_command import CONFIGS_DIR
from scsam_monai.data.normalize import normalize_slice
from scsam_monai.data.transforms import LoadEMImaged
from scsam_monai.engines.inference_job import segment_inputs
from scsam_monai.engines.volume_inference import SliceWiseInferer, segment_slices
from scsam_monai.io.readers import open_volume
from scsam_monai.synthetic import synthesize_slice

ASYMMETRIC = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17  # 3 rows, 5 columns, no symmetry


def _parser(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS_DIR / n) for n in names])
    return parser


@pytest.fixture(scope="module")
def bundle() -> ConfigParser:
    """train.yaml + inference.yaml + demo.yaml: the image-in model with tiny random encoders, as MONAI Label lays it."""
    torch.manual_seed(0)
    return _parser("train.yaml", "inference.yaml", "demo.yaml")


@pytest.fixture(scope="module")
def em_image(tmp_path_factory) -> tuple[np.ndarray, str]:
    """A non-square synthetic EM slice (48 x 80) whose label map is not constant under the random model."""
    image, _ = synthesize_slice((48, 80), seed=3)
    path = tmp_path_factory.mktemp("orientation") / "slice.tif"
    tifffile.imwrite(path, image)
    return image, str(path)


def test_the_loader_keeps_a_3x5_image_3x5_in_every_mode(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", ASYMMETRIC)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([ASYMMETRIC, ASYMMETRIC[::-1]]))
    image = LoadEMImaged("image")({"image": tmp_path / "a.tif"})["image"]
    np.testing.assert_array_equal(image, ASYMMETRIC)
    stack = LoadEMImaged("image", stacks=True)({"image": tmp_path / "stack.tif"})["image"]
    assert stack.shape == (3, 5, 2)  # (H, W, D): depth last, as MONAI's channel-first (1, H, W, D)
    np.testing.assert_array_equal(stack[..., 1], ASYMMETRIC[::-1])
    one = LoadEMImaged("image", slice_key="slice")({"image": tmp_path / "stack.tif", "slice": 1})["image"]
    np.testing.assert_array_equal(one, ASYMMETRIC[::-1])
    with pytest.raises(ValueError, match="stack.tif: expected a 2D single-channel image, got a stack"):
        LoadEMImaged("image")({"image": tmp_path / "stack.tif"})


def test_training_reads_image_and_label_as_the_file_stores_them(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", ASYMMETRIC)
    item = _parser("train.yaml").get_parsed_content("preprocessing")(
        {"image": tmp_path / "a.tif", "label": tmp_path / "a.tif"}
    )
    assert tuple(item["image"].shape) == tuple(item["label"].shape) == (1, 3, 5)
    np.testing.assert_array_equal(np.asarray(item["label"][0]), ASYMMETRIC)
    np.testing.assert_allclose(np.asarray(item["image"][0]), normalize_slice(ASYMMETRIC), rtol=0, atol=1e-6)


def test_the_transform_chain_gives_a_3x5_label_map_for_a_3x5_image(bundle, tmp_path):
    from monai.data import NibabelWriter

    tifffile.imwrite(tmp_path / "a.tif", ASYMMETRIC)
    item = bundle.get_parsed_content("preprocessing")({"image": tmp_path / "a.tif"})
    assert tuple(item["image"].shape) == (1, 3, 5)  # the network sees the slice as training did
    with torch.no_grad():
        logits = bundle.get_parsed_content("inferer")(
            torch.as_tensor(item["image"])[None], bundle.get_parsed_content("network").eval()
        )
    assert tuple(logits.shape) == (1, 4, 3, 5)  # background, then the 3 classes
    label = bundle.get_parsed_content("postprocessing")({"pred": logits[0]})["pred"]
    assert tuple(label.shape) == (5, 3)  # (x, y): the order MONAI's writers take, as MONAI's LoadImage gives
    writer = NibabelWriter()  # what MONAI Label's writer uses for .nii.gz
    writer.set_data_array(np.asarray(label), channel_dim=None)
    writer.write(str(tmp_path / "label.nii.gz"))
    with open_volume(tmp_path / "label.nii.gz") as volume:
        assert volume.shape[1:] == (3, 5)  # the written label map lies on its 3 x 5 image


def _chain_label(bundle: ConfigParser, path: str) -> np.ndarray:
    """The label map of the bundle's transform chain (inference.yaml: preprocessing, inferer, postprocessing), rows
    first (the chain hands it to MONAI's writers in their (x, y) order).

    One slice per network call, as the other paths run here: batches of another size may round a logit that sits
    on the decision threshold the other way.
    """
    item = bundle.get_parsed_content("preprocessing")({"image": path})
    network = bundle.get_parsed_content("network").eval()
    with torch.no_grad():
        logits = SliceWiseInferer(batch_size=1)(torch.as_tensor(item["image"])[None], network)
    return np.swapaxes(np.asarray(bundle.get_parsed_content("postprocessing")({"pred": logits[0]})["pred"]), 0, 1)


def test_every_inference_path_gives_the_same_label_map_pixel_for_pixel(bundle, em_image, tmp_path):
    image, path = em_image
    network = bundle.get_parsed_content("network").eval()
    chain = _chain_label(bundle, path)
    assert chain.shape == image.shape == (48, 80)
    assert len(np.unique(chain)) > 1, "a constant label map would not show an orientation"

    # the bundle's own inference job (run inference): a TIFF on the input's grid
    (record,) = segment_inputs(network, path, tmp_path / "job", overlay_slices=None, batch_size=1, progress=False)
    np.testing.assert_array_equal(tifffile.imread(record["label"]), chain)

    # the MONAI Label app's streaming inference (ScSAMInferTask.run_inferer): slices from the file's Volume
    streamed = {}
    with open_volume(path) as volume:
        segment_slices(network, volume, writer=streamed.__setitem__, batch_size=1, progress=False)
    np.testing.assert_array_equal(streamed[0], chain)

    # the same image transposed gives another map: the paths agree because they read it the same way
    tifffile.imwrite(tmp_path / "transposed.tif", np.ascontiguousarray(image.T))
    assert not np.array_equal(_chain_label(bundle, str(tmp_path / "transposed.tif")).T, chain)


def test_a_stack_through_the_transform_chain_matches_its_slices(bundle, em_image, tmp_path):
    image, path = em_image
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image[::-1]]))
    stacked = _chain_label(bundle, str(tmp_path / "stack.tif"))
    assert stacked.shape == (48, 80, 2)
    np.testing.assert_array_equal(stacked[..., 0], _chain_label(bundle, path))


def test_the_mae_pretraining_reads_slices_of_a_volume_in_the_same_orientation(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([ASYMMETRIC[::-1], ASYMMETRIC]))
    parser = _parser("pretrain_mae.yaml")
    loader = next(t for t in parser.get_parsed_content("train#preprocessing").transforms if isinstance(t, LoadEMImaged))
    np.testing.assert_array_equal(loader({"image": tmp_path / "stack.tif", "slice": 1})["image"], ASYMMETRIC)
