"""The packaged bundle served by MONAI Label's STOCK ``monaibundle`` sample app (``BundleInferTask``), over HTTP.

A real ``monailabel start_server`` on 127.0.0.1 with a copy of ``sample-apps/monaibundle`` as shipped with MONAI
Label, ``--conf models scsam_em_organelle_segmentation``, the bundle written by ``scripts/package_bundle.py`` in
the app's ``model/`` folder (its inference.yaml switched to the tiny random-encoder profile, for speed) and a
stand-in ``models/model.pt`` made as the Model Zoo CI makes one (``network_def``'s own state dict: not trained).
An uploaded 2D slice comes back from ``/infer`` as a label map of its shape with values in 0..3.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scsam_monai.io.readers import open_volume

from .conftest import IMAGE_SIZE, LabelServer

monailabel = pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")

START_TIMEOUT = 240


def _stock_app(work: Path) -> Path:
    app = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"
    if not (app / "main.py").is_file():
        pytest.skip(f"MONAI Label's monaibundle sample app is not installed at {app}")
    return Path(shutil.copytree(app, work / "app", ignore=shutil.ignore_patterns("__pycache__", "model")))


def _bundle(repo_root: Path, models_dir: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    from scripts.package_bundle import BUNDLE_NAME, package

    bundle = package(repo_root / "bundle", models_dir, name=BUNDLE_NAME)
    config = bundle / "configs" / "inference.yaml"
    text = config.read_text()
    assert "\ntiny_random_encoders: false\n" in text
    config.write_text(text.replace("\ntiny_random_encoders: false\n", "\ntiny_random_encoders: true\n"))
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def stock_server(tmp_path_factory, repo_root):
    work = tmp_path_factory.mktemp("stock_app")
    app = _stock_app(work)
    bundle = _bundle(repo_root, app / "model")
    (work / "studies").mkdir()
    conf = {"models": bundle.name, "sam2": "false", "skip_trainers": "true"}
    conf["zoo_source"] = "github"  # a local bundle: no look-up in the online Model Zoo
    server = LabelServer(app, work / "studies", conf, work, START_TIMEOUT)
    try:
        server.wait_until_up()
        yield server.url, bundle.name, server.log, bundle
    finally:
        server.stop()


def test_stock_app_lists_the_bundle_with_its_classes(stock_server):
    url, name, log, bundle = stock_server
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert name in info["models"], (info["models"], log.read_text()[-4000:])
    # channel_def numbers the network's channels as the label values: background 0 is not a label to draw
    assert info["models"][name]["labels"] == {"nucleus": 1, "mitochondria": 2, "granules": 3}, info["models"][name]


def test_stock_app_segments_an_uploaded_slice(stock_server, synthetic, tmp_path):
    url, name, log, bundle = stock_server
    image = synthetic / "images" / "val_000.tif"
    label = _stock_infer(url, name, log, image, tmp_path)
    assert sorted(label.shape) == [IMAGE_SIZE, IMAGE_SIZE]
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}


def test_stock_app_gives_run_inferences_label_map_for_a_non_square_slice(stock_server, tmp_path):
    """The stock chain (LoadEMImaged, the model, argmax, MONAI Label's writer) and the bundle's own inference job
    read, segment and write the slice the same way: the same label map, pixel for pixel, on the image's grid."""
    import tifffile
    from monai.bundle import ConfigParser

    from scsam_monai.data.normalize import normalize_slice
    from scsam_monai.engines.inference_job import segment_inputs
    from scsam_monai.synthetic import synthesize_slice

    url, name, log, bundle = stock_server
    image, _ = synthesize_slice((48, 80), seed=3)  # 48 rows, 80 columns
    tifffile.imwrite(tmp_path / "slice.tif", image)
    served = _stock_infer(url, name, log, tmp_path / "slice.tif", tmp_path)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    (record,) = segment_inputs(network, tmp_path / "slice.tif", tmp_path / "job", overlay_slices=None, batch_size=1)
    expected = tifffile.imread(record["label"])
    assert expected.shape == served.shape == (48, 80)
    assert len(np.unique(expected)) > 1  # a constant map would not show the orientation
    # the server's process rounds the encoders' bf16 arithmetic in its own thread layout, and the random tiny
    # model's logits are small (|logit| < 0.05): pixels whose two best logits lie within 1e-3 may go either way
    # (about 0.3% did); every other pixel must agree exactly
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(normalize_slice(image))[None, None])[0]
    top = logits.topk(2, dim=0).values
    clear = ((top[0] - top[1]) > 1e-3).numpy()
    assert clear.mean() > 0.3, clear.mean()
    np.testing.assert_array_equal(served[clear], expected[clear])
    assert (served == expected).mean() > 0.99


def _stock_infer(url: str, name: str, log: Path, image: Path, tmp_path: Path) -> np.ndarray:
    """POST ``image`` to the stock app's ``/infer``; the label map it returns (NIfTI), read as ``(H, W)``."""
    with open(image, "rb") as handle:
        answer = requests.post(
            f"{url}/infer/{name}",
            params={"output": "image"},
            data={"params": json.dumps({"result_extension": ".nii.gz"})},
            files={"file": (image.name, handle)},
            timeout=300,
        )
    assert answer.status_code == 200, (answer.text[:2000], log.read_text()[-6000:])
    path = tmp_path / f"{image.stem}_label.nii.gz"
    path.write_bytes(answer.content)
    with open_volume(path) as volume:
        return np.squeeze(volume.read())


@pytest.mark.slow
def test_stock_task_serves_a_new_head_without_a_new_compiled_graph(repo_root, tmp_path):
    """MONAI Label's own ``BundleInferTask`` deep-copies its template network for every new head, and the copy of the
    SAM encoder compiles again at its first call (``FrozenSamEncoder`` keeps no compiled graph in a copy). Dynamo
    then finds the graph it compiled for the previous copy (same code; parameters are graph inputs): no new graph,
    so the stock path does not pay the compilation again either (measured for ViT-B: the copy's first call took as
    long as any later one)."""
    from monailabel.tasks.infer.bundle import BundleInferTask
    from torch._dynamo.utils import counters

    bundle = _bundle(repo_root, tmp_path)
    config = bundle / "configs" / "inference.yaml"
    config.write_text(config.read_text().replace("\nsam_compile: auto", "\nsam_compile: true"))  # not auto on tiny
    task = BundleInferTask(str(bundle), {})
    image = torch.rand(1, 1, 48, 48)
    first = task._get_network("cpu", None)
    first(image)
    assert first.sam_encoder.compiled
    frames = counters["frames"]["total"]
    head = bundle / "models" / "model.pt"
    stat = head.stat()
    os.utime(head, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # a new head, as training leaves it
    second = task._get_network("cpu", None)
    second(image)
    assert second is not first and second.sam_encoder.compiled
    assert counters["frames"]["total"] == frames  # nothing compiled for the copy
