"""The inference task's start-up warm-up and its head reloads: the SAM encoder is compiled once, in the background.

In process, on the demo profile (tiny random-weight encoders, CPU) with ``sam_compile`` forced on (its ``auto``
leaves the tiny arch uncompiled). ``torch.compile`` is replaced by a stand-in that counts its calls and sleeps as a
compilation would (ViT-B takes about 1.5 minutes on a CPU), so the tests are fast and see every compilation. The
last test compiles for real (slow) and checks that the new head's network runs on the warm-up's compiled graph.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("monailabel")
pytest.importorskip("itk")
torch = pytest.importorskip("torch")

from fastapi import HTTPException  # noqa: E402

from scsam_monai.label.bundle import BundleSettings  # noqa: E402
from scsam_monai.label.infer import ScSAMInferTask, copy_for_device  # noqa: E402

COMPILE_SECONDS = 2.0


class SlowCompile:
    """Stand-in for ``torch.compile``: records each call, sleeps ``seconds``, returns the module (eager).

    Args:
        seconds: how long a "compilation" takes.
        error: raise this instead of compiling.
    """

    def __init__(self, seconds: float = COMPILE_SECONDS, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.error = error
        self.calls: list[str] = []

    def __call__(self, model, **options):
        self.calls.append(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return model


@pytest.fixture
def compile_calls(monkeypatch) -> SlowCompile:
    fake = SlowCompile()
    monkeypatch.setattr(torch, "compile", fake)
    return fake


@pytest.fixture(scope="module")
def settings() -> BundleSettings:
    overrides = json.dumps({"sam_compile": True})
    return BundleSettings.from_conf({"configs": "demo.yaml", "device": "cpu", "overrides": overrides})


def _save_head(settings: BundleSettings, path: Path, seed: int) -> Path:
    """An untrained head's weights (``seed`` makes them differ), with a new modification time."""
    torch.manual_seed(seed)
    head = settings.parser("train.yaml").get_parsed_content("network_def").head
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    return path


def _slice(folder: Path) -> Path:
    tifffile.imwrite(folder / "slice.tif", np.random.default_rng(3).integers(0, 255, (40, 48), dtype=np.uint8))
    return folder / "slice.tif"


def _served(task: ScSAMInferTask) -> torch.nn.Module:
    (network, _), *_ = task._networks.values()
    return network


def test_warmup_compiles_in_the_background_and_the_first_request_waits_only_for_the_rest(
    tmp_path, settings, compile_calls
):
    task = ScSAMInferTask(settings, _save_head(settings, tmp_path / "model.pt", seed=0))
    assert task.info()["warmup"] == {"state": "pending"}
    started = time.time()
    task.start_warmup()
    assert time.time() - started < 0.5  # the server is not held up
    assert task.info()["warmup"]["state"] == "running"
    time.sleep(COMPILE_SECONDS / 2)
    _, params = task({"image": str(_slice(tmp_path))})
    assert compile_calls.calls == ["scsam-warmup"]  # compiled once, by the warm-up, not by the request
    warmup = params["warmup"]
    assert warmup["state"] == "done" and warmup["sam_compiled"] and warmup["head"]
    assert 0 < warmup["waited_s"] < warmup["seconds"]  # it arrived during the warm-up: it waited for the rest
    info = task.info()["warmup"]
    assert info["state"] == "done" and info["seconds"] >= COMPILE_SECONDS and info["device"] == "cpu"
    _, params = task({"image": str(_slice(tmp_path))})
    assert "warmup" not in params  # only the requests that waited are told
    assert compile_calls.calls == ["scsam-warmup"]


def test_a_new_head_is_served_without_compiling_the_encoder_again(tmp_path, settings, compile_calls):
    model = _save_head(settings, tmp_path / "model.pt", seed=0)
    task = ScSAMInferTask(settings, model)
    task.start_warmup()
    task.warmup.thread.join()
    before = _served(task)
    _save_head(settings, model, seed=1)  # what a training run leaves behind
    task({"image": str(_slice(tmp_path))})
    after = _served(task)
    assert after is not before  # a new network with the new head ...
    expected = torch.load(model, weights_only=True)
    assert all(torch.equal(after.state_dict()[k], v) for k, v in expected.items())
    key = "mask_decoder.iou_token.weight"
    assert not torch.equal(before.state_dict()[key], expected[key])
    assert after.sam_encoder is before.sam_encoder and after.sam_encoder.compiled  # ... on the compiled encoder
    assert compile_calls.calls == ["scsam-warmup"]


def test_without_a_head_the_warmup_compiles_what_the_first_head_is_served_with(tmp_path, settings, compile_calls):
    model = tmp_path / "model" / "model.pt"
    task = ScSAMInferTask(settings, model)
    task.start_warmup()
    task.warmup.thread.join()
    assert task.info()["warmup"]["state"] == "done" and task.info()["warmup"]["head"] is False
    with pytest.raises(HTTPException) as caught:
        task({"image": str(_slice(tmp_path))})
    assert caught.value.status_code == 409
    _save_head(settings, model, seed=0)
    task({"image": str(_slice(tmp_path))})
    assert compile_calls.calls == ["scsam-warmup"]


def test_the_warmup_runs_a_full_batch_and_a_partial_one(tmp_path, settings, compile_calls):
    """A compiled encoder compiles again for the first batch of another size: a stack's last batch, often."""
    task = ScSAMInferTask(settings, _save_head(settings, tmp_path / "model.pt", seed=0), batch_size=2)
    batches: list[tuple[int, ...]] = []
    task.network.register_forward_pre_hook(lambda module, args: batches.append(tuple(args[0].shape)))  # copied too
    task.start_warmup()
    task.warmup.thread.join()
    assert batches == [(2, 1, 256, 256), (1, 1, 256, 256)]  # the tiny profile's canvas
    assert task.info()["warmup"]["batches"] == [2, 1]


def test_a_failed_warmup_is_reported_and_requests_are_still_served(tmp_path, settings, monkeypatch):
    monkeypatch.setattr(torch, "compile", SlowCompile(0.0, error=RuntimeError("no C++ compiler")))
    task = ScSAMInferTask(settings, _save_head(settings, tmp_path / "model.pt", seed=0))
    task.start_warmup()
    task.warmup.thread.join()
    info = task.info()["warmup"]
    assert info["state"] == "failed" and "no C++ compiler" in info["error"]
    result, _ = task({"image": str(_slice(tmp_path))})  # the encoder runs eagerly
    assert Path(result).is_file()


def test_warmup_can_be_switched_off(tmp_path, settings, compile_calls):
    task = ScSAMInferTask(settings, _save_head(settings, tmp_path / "model.pt", seed=0), {"warmup": "false"})
    task.start_warmup()
    assert task.info()["warmup"] == {"state": "off"} and task.warmup.thread is None
    _, params = task({"image": str(_slice(tmp_path))})
    assert "warmup" not in params and compile_calls.calls == [threading.current_thread().name]


def test_a_copy_for_another_device_does_not_share_the_encoders(settings):
    network = settings.parser("train.yaml", "inference.yaml").get_parsed_content("network_def")
    same = copy_for_device(network, "cpu")
    assert same.sam_encoder is network.sam_encoder and same.mae_encoder is network.mae_encoder
    assert same.head is not network.head
    network.to("meta")  # stands for a GPU: the copy for the CPU must have encoders of its own
    other = copy_for_device(network, "cpu")
    assert other.sam_encoder is not network.sam_encoder and other.mae_encoder is not network.mae_encoder


@pytest.mark.slow
def test_with_a_real_compilation_a_new_head_runs_on_the_graph_the_warmup_compiled(tmp_path, settings):
    model = _save_head(settings, tmp_path / "model.pt", seed=0)
    task = ScSAMInferTask(settings, model)
    task.start_warmup()
    task.warmup.thread.join()
    assert task.info()["warmup"]["state"] == "done" and task.info()["warmup"]["sam_compiled"]
    compiled = _served(task).sam_encoder._compiled_fn
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    _save_head(settings, model, seed=1)
    _, params = task({"image": str(_slice(tmp_path))})
    assert "warmup" not in params
    assert _served(task).sam_encoder._compiled_fn is compiled
