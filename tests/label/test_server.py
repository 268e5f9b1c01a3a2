"""A real MONAI Label server with our app (``monailabel start_server --app apps/scsam``) over HTTP on 127.0.0.1.

The app serves the tiny random-weight demo profile (``--conf configs demo.yaml``) with an untrained head
checkpoint, on a studies folder of synthetic EM slices with final labels for some of them. Checked: ``/infer``
returns a label map of the image's shape and classes; bad uploads (corrupt, truncated or 4D TIFF, RGB PNG, NaN
pixels, empty file, a text file; label maps with wrong values or shape) are answered 415/422 and leave the
datastore and the server as they were; ``/train`` runs the bundle's training on the datastore's labels (MONAI
Label's ``BundleTrainTask`` in its training process), warm-started from the served head, and replaces it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scsam_monai.io.readers import open_volume

from .conftest import IMAGE_SIZE, LabelServer, bad_files, make_studies

pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")

MODEL = "scsam"
START_TIMEOUT = 180
TRAIN_TIMEOUT = 600


def _untrained_head(path: Path) -> Path:
    import torch

    from scsam_monai.label.bundle import BundleSettings

    parser = BundleSettings.from_conf({"configs": "demo.yaml"}).parser("train.yaml")
    head = parser.get_parsed_content("network_def").head
    torch.save(head.state_dict(), path)
    return path


def _server(repo_root: Path, work: Path, studies: Path, head: Path) -> LabelServer:
    """Our app (a copy of apps/scsam) with the demo profile, serving ``head`` on the CPU."""
    app = work / "app"
    shutil.copytree(repo_root / "apps" / "scsam", app, ignore=shutil.ignore_patterns("model", "logs", "lib", "bin"))
    conf = {"configs": "demo.yaml", "head_checkpoint": str(head), "device": "cpu"}
    return LabelServer(app, studies, conf, work, START_TIMEOUT)


@pytest.fixture(scope="module")
def server(tmp_path_factory, repo_root, synthetic):
    work = tmp_path_factory.mktemp("monailabel")
    studies = make_studies(synthetic, work / "studies")
    head = _untrained_head(work / "untrained_head.pt")
    srv = _server(repo_root, work, studies, head)
    try:
        srv.wait_until_up()
        yield srv
    finally:
        srv.stop()


def _infer(server: LabelServer, image_id: str, tmp_path: Path) -> np.ndarray:
    answer = requests.post(f"{server.url}/infer/{MODEL}", params={"image": image_id, "output": "image"}, timeout=300)
    assert answer.status_code == 200, (answer.text, server.tail())
    path = tmp_path / f"{image_id}_seg.nii.gz"
    path.write_bytes(answer.content)
    with open_volume(path) as volume:
        return volume.read()


def _datastore_ids(server: LabelServer) -> set[str]:
    answer = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return set(answer.json()["objects"])


def _head_stamp(server: LabelServer) -> tuple[int, str]:
    path = server.app / "model" / "model.pt"
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_info_lists_the_model_its_classes_and_the_trainer(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"][MODEL]["labels"] == {"nucleus": 1, "mitochondria": 2, "granules": 3}
    assert MODEL in info["trainers"]
    assert {"train_000", "val_000", "test_000"} <= _datastore_ids(server)


def test_infer_returns_a_label_map_of_the_image_shape(server, synthetic, tmp_path):
    label = _infer(server, "test_000", tmp_path)
    image = tifffile.imread(synthetic / "images" / "test_000.tif")
    assert label.shape == (1, *image.shape) == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
    params = requests.post(f"{server.url}/infer/{MODEL}", params={"image": "test_000", "output": "json"}, timeout=300)
    assert params.status_code == 200
    assert params.json()["label_names"] == {"background": 0, "nucleus": 1, "mitochondria": 2, "granules": 3}


def test_infer_on_an_uploaded_file_and_an_unknown_id(server, synthetic, tmp_path):
    with open(synthetic / "images" / "val_000.tif", "rb") as f:
        answer = requests.post(
            f"{server.url}/infer/{MODEL}", params={"output": "image"}, files={"file": ("val_000.tif", f)}, timeout=300
        )
    assert answer.status_code == 200, answer.text
    (tmp_path / "seg.nii.gz").write_bytes(answer.content)
    assert open_volume(tmp_path / "seg.nii.gz").shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    missing = requests.post(f"{server.url}/infer/{MODEL}", params={"image": "no_such_image"}, timeout=60)
    assert missing.status_code == 404, missing.text


def test_bad_uploads_get_4xx_and_the_server_stays_up(server, tmp_path):
    before = _datastore_ids(server)
    for stem, (path, status) in bad_files(tmp_path / "bad").items():
        with open(path, "rb") as f:
            answer = requests.post(f"{server.url}/infer/{MODEL}", files={"file": (path.name, f)}, timeout=120)
        assert answer.status_code == status, (stem, answer.status_code, answer.text, server.tail(2000))
        assert answer.json()["detail"], answer.text  # says what is wrong
        with open(path, "rb") as f:
            answer = requests.put(
                f"{server.url}/datastore/image",
                params={"image": f"bad_{stem}"},
                files={"file": (path.name, f)},
                timeout=60,
            )
        assert answer.status_code == status, (stem, answer.status_code, answer.text, server.tail(2000))
    assert _datastore_ids(server) == before  # nothing was stored
    assert server.process.poll() is None
    # a good request right after the bad ones
    assert _infer(server, "test_000", tmp_path).shape == (1, IMAGE_SIZE, IMAGE_SIZE)


def test_bad_label_uploads_get_422_and_good_ones_are_saved(server, tmp_path):
    wrong_values = tmp_path / "wrong_values.tif"
    tifffile.imwrite(wrong_values, np.full((IMAGE_SIZE, IMAGE_SIZE), 9, np.uint8))
    wrong_shape = tmp_path / "wrong_shape.tif"
    tifffile.imwrite(wrong_shape, np.zeros((IMAGE_SIZE, IMAGE_SIZE + 1), np.uint8))
    for path, match in ((wrong_values, "outside 0..3"), (wrong_shape, "shape")):
        with open(path, "rb") as f:
            answer = requests.put(
                f"{server.url}/datastore/label",
                params={"image": "test_000", "tag": "final"},
                files={"label": (path.name, f)},
                timeout=60,
            )
        assert answer.status_code == 422 and match in answer.json()["detail"], answer.text
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8))
    with open(good, "rb") as f:
        answer = requests.put(
            f"{server.url}/datastore/label",
            params={"image": "test_000", "tag": "draft"},
            files={"label": (good.name, f)},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text


@pytest.mark.slow
def test_training_on_the_datastore_labels_replaces_the_served_head(server, tmp_path):
    before = _head_stamp(server)
    params = {"max_epochs": 2, "views_per_image": 1, "train_batch_size": 2, "num_workers": 0}
    answer = requests.post(f"{server.url}/train/{MODEL}", json=params, timeout=60)
    assert answer.status_code == 200, answer.text
    deadline = time.time() + TRAIN_TIMEOUT
    status: dict = {}
    while time.time() < deadline:
        status = requests.get(f"{server.url}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2)
    details = "\n".join(status.get("details", []))
    assert status.get("status") == "DONE", (status, server.tail())
    assert _head_stamp(server)[0] != before[0]  # replaced by the run's best head
    runs = sorted((server.app / "model" / "train").glob("run_*"))
    assert runs, details
    datalist = json.loads((runs[-1] / "datalist.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 4  # train_000..002 and val_000
    curve = json.loads((runs[-1] / "learning_curve.json").read_text())
    assert len(curve["val_metric"]) == 3  # untrained + 2 epochs
    stats = json.loads((server.app / "model" / "train" / "last_run.json").read_text())
    assert stats["labelled_images"] == 4 and stats["epochs"] == 2
    assert requests.get(f"{server.url}/info/", timeout=30).json()["train_stats"][MODEL] == stats
    # it fine-tuned the served head: BundleTrainTask's checkpoint loader, pointed at the served head
    served = (server.app / "model" / "model.pt").resolve()
    overrides = json.loads((runs[-1] / "label_overrides.json").read_text())
    assert overrides["train#handlers_every_rank"][0]["load_path"] == str(served)
    log = server.tail(10**7)
    assert f"Restored all variables from {served}" in log
    # the next inference reloads the head the run wrote
    loads = log.count("Loaded ScSAM head weights")
    label = _infer(server, "test_000", tmp_path)
    assert label.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert server.tail(10**7).count("Loaded ScSAM head weights") == loads + 1
