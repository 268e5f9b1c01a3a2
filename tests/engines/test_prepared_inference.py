"""One preprocessing from training to inference : a model trained on ``scsam-prepare``'s slices
gives the same labels on the raw volume (its preprocessing ``prepared``: the volume's own window, measured
streaming as ``scsam-prepare`` measures it) as on the slices ``scsam-prepare`` wrote from it.

A raw uint16 FIB-SEM-like volume (intensity drift along z, bright and dark organelles, a few hot and dead
pixels) is written as a TIFF stack and prepared with ``scsam-prepare`` (no crop, no downscale). A tiny
convolutional head is trained on the prepared slices as the bundle reads them (``train.yaml``'s preprocessing
with ``image_normalization: prepared``), then both inputs are segmented with the bundle's inference function.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.data import load_decathlon_datalist
from torch import nn

from scsam_monai.cli.prepare import main as scsam_prepare
from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.engines.inference_job import segment_inputs
from tests.helpers import StandInModel, train_preprocessing

DEPTH, TRAIN, SIZE = 6, 4, 64


def _raw_volume() -> tuple[np.ndarray, np.ndarray]:
    """``(raw uint16, labels uint8)``: background drifting along z, bright (1) and dark (2) discs, outliers.

    Slices 1 and 4 hold no bright organelle: their own 99.5th percentile is the background's, so a per-slice
    normalisation stretches their background towards white, where a per-volume window keeps it grey."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    raw = np.empty((DEPTH, SIZE, SIZE), np.float64)
    labels = np.zeros((DEPTH, SIZE, SIZE), np.uint8)
    for z in range(DEPTH):
        image = rng.normal(3000 + 150 * z, 120, (SIZE, SIZE))
        for k in range(2 + z):  # more organelles deeper in: per-slice percentiles change with the content
            cls = 2 if z in (1, 4) else 1 + k % 2
            cy, cx, r = rng.integers(8, SIZE - 8), rng.integers(8, SIZE - 8), rng.integers(4, 8)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            labels[z][disc] = cls
        image[labels[z] == 1] += 2500
        image[labels[z] == 2] -= 1800
        image.flat[rng.integers(0, SIZE * SIZE, 6)] = rng.choice([0, 65535], 6)  # dead and hot pixels
        raw[z] = image
    return raw.clip(0, 65535).astype(np.uint16), labels


def _train(datalist: str) -> StandInModel:
    """Train on the prepared training slices as the bundle reads them (``image_normalization: prepared``)."""
    preprocessing = train_preprocessing({"image_normalization": "prepared"})
    items = [preprocessing(item) for item in load_decathlon_datalist(datalist, True, "training")]
    images = torch.stack([torch.as_tensor(item["image"]) for item in items])
    labels = torch.stack([torch.as_tensor(item["label"]) for item in items]).long()
    targets = torch.cat([(labels == c).float() for c in (1, 2)], dim=1)
    torch.manual_seed(0)
    model = StandInModel("conv", num_classes=2)  # logits from local intensities: they depend on the normalisation
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(200):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model.net(images), targets)  # per-class masks
        loss.backward()
        optimizer.step()
    return ImagePreprocessing("prepared").attach(model.eval())  # recorded with its weights, as training does


@pytest.fixture(scope="module")
def prepared_and_trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("prepared_inference")
    raw, labels = _raw_volume()
    tifffile.imwrite(work / "raw.tif", raw, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(work / "labels.tif", labels, imagej=True, metadata={"axes": "ZYX"})
    status = scsam_prepare(
        [
            "--image", str(work / "raw.tif"), "--labels", str(work / "labels.tif"),
            "--classes", "bright,dark", "--train-slices", f"0:{TRAIN}", "--val-slices", f"{TRAIN}:{DEPTH}",
            "--out", str(work / "prepared"), "--quiet",
        ]
    )  # fmt: skip
    assert status == 0
    return work, raw, labels, _train(str(work / "prepared" / "datalist.json"))


def test_raw_volume_and_prepared_slices_give_the_same_labels(prepared_and_trained):
    work, raw, truth, model = prepared_and_trained
    (record,) = segment_inputs(model, work / "raw.tif", work / "out_raw", batch_size=2)
    from_raw = tifffile.imread(record["label"])
    records = [
        record
        for split in ("training", "validation")  # every slice of the volume, in slice order
        for record in segment_inputs(
            model,
            None,
            work / "out_prepared",
            datalist=work / "prepared" / "datalist.json",
            split=split,
            batch_size=2,
        )
    ]
    assert len(records) == DEPTH
    from_prepared = np.stack([tifffile.imread(r["label"]) for r in records])
    assert from_raw.shape == from_prepared.shape == raw.shape
    agreement = (from_raw == from_prepared).mean()
    assert agreement >= 0.99, agreement  # only the uint8 rounding of the prepared slices may differ
    assert (from_prepared == truth).mean() > 0.95  # the head learned the organelles, not a constant map
    assert {1, 2} <= set(np.unique(from_raw).tolist())


def test_per_image_normalisation_of_the_raw_volume_does_not_match_the_training(prepared_and_trained):
    """The check above can fail: the per-slice normalisation the model was not trained with changes the labels."""
    work, _, truth, model = prepared_and_trained
    ImagePreprocessing("per_image").attach(model)  # as if the weights recorded per-image normalisation
    try:
        (record,) = segment_inputs(model, work / "raw.tif", work / "out_per_image")
    finally:
        ImagePreprocessing("prepared").attach(model)
    per_image = tifffile.imread(record["label"])
    (record,) = segment_inputs(model, work / "raw.tif", work / "out_raw2")
    prepared = tifffile.imread(record["label"])
    assert (per_image == prepared).mean() < 0.95
    assert (prepared == truth).mean() - (per_image == truth).mean() > 0.03
