"""A real MONAI Label server with our app warms its network up at start, in the background, over HTTP on 127.0.0.1.

The app (a copy of apps/scsam) serves the tiny demo profile with ``sam_compile`` forced on; its ``main.py`` replaces
``torch.compile`` by a stand-in that sleeps as a ViT-B compilation would on a CPU (shortened) and writes a line per
call to a file, so that the test sees every compilation in the server process. Checked: ``/info`` answers while the
warm-up runs and reports it; the first request waits for the rest of it and says so; a new head (what training
leaves behind) is served without a second compilation.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from .conftest import LabelServer, make_studies

pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")

MODEL = "scsam"
START_TIMEOUT = 180
COMPILE_SECONDS = 15

MAIN = '''"""The ScSAM app with a slow, counted stand-in for torch.compile (tests/label/test_server_warmup.py)."""

import time

import torch


def _slow_compile(model, **options):
    with open({log!r}, "a") as log:
        log.write("compile\\n")
    time.sleep({seconds})
    return model


torch.compile = _slow_compile

from scsam_monai.label.app import ScSAMLabelApp  # noqa: E402
'''


def _head(path: Path, seed: int) -> Path:
    """An untrained demo head (``seed`` makes it differ), with a new modification time."""
    import torch

    from scsam_monai.label.bundle import BundleSettings

    torch.manual_seed(seed)
    head = BundleSettings.from_conf({"configs": "demo.yaml"}).parser("train.yaml").get_parsed_content("network_def")
    tmp = path.with_suffix(".partial")
    torch.save(head.head.state_dict(), tmp)
    tmp.replace(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, repo_root, synthetic):
    work = tmp_path_factory.mktemp("warmup_server")
    studies = make_studies(synthetic, work / "studies")
    app = work / "app"
    shutil.copytree(repo_root / "apps" / "scsam", app, ignore=shutil.ignore_patterns("model", "logs", "lib", "bin"))
    compiles = work / "compiles.txt"
    (app / "main.py").write_text(MAIN.format(log=str(compiles), seconds=COMPILE_SECONDS))
    conf = {
        "configs": "demo.yaml",
        "head_checkpoint": str(_head(work / "head.pt", seed=0)),
        "device": "cpu",
        "overrides": json.dumps({"sam_compile": True}, separators=(",", ":")),  # the launcher splits on spaces
        "skip_trainers": "true",
    }
    srv = LabelServer(app, studies, conf, work, START_TIMEOUT)
    try:
        srv.wait_until_up()
        yield srv, compiles
    finally:
        srv.stop()


def _warmup(server: LabelServer) -> dict:
    return requests.get(f"{server.url}/info/", timeout=30).json()["models"][MODEL]["warmup"]


def _infer(server: LabelServer) -> dict:
    answer = requests.post(f"{server.url}/infer/{MODEL}", params={"image": "test_000", "output": "json"}, timeout=300)
    assert answer.status_code == 200, (answer.text, server.tail())
    return answer.json()


def test_the_server_answers_while_the_warmup_runs_and_the_first_request_waits_for_the_rest(server):
    server, compiles = server
    warmup = _warmup(server)
    assert warmup["state"] == "running", (warmup, server.tail())
    assert warmup["seconds"] < COMPILE_SECONDS
    params = _infer(server)
    assert params["warmup"]["state"] == "done" and params["warmup"]["sam_compiled"], params
    assert 0 < params["warmup"]["waited_s"] <= params["warmup"]["seconds"]
    warmup = _warmup(server)
    assert warmup["state"] == "done" and warmup["seconds"] >= COMPILE_SECONDS and warmup["device"] == "cpu"
    assert "warmup" not in _infer(server)
    assert compiles.read_text().splitlines() == ["compile"]


def test_a_new_head_is_served_without_compiling_again(server):
    server, compiles = server
    loads = server.tail(10**7).count("Loaded ScSAM head weights")
    _head(server.app / "model" / "model.pt", seed=1)  # what a training run leaves behind
    started = time.time()
    _infer(server)
    assert time.time() - started < COMPILE_SECONDS
    assert server.tail(10**7).count("Loaded ScSAM head weights") == loads + 1
    assert compiles.read_text().splitlines() == ["compile"]
