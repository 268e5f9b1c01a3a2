"""The packaged bundle TRAINED by MONAI Label's STOCK ``BundleTrainTask``, the trainer of the ``monaibundle`` app.

The stock sample app builds ``BundleTrainTask(<app>/model/<bundle>, conf)`` for every bundle it serves and, for a
training request, calls it with the request and the app's datastore (``MONAILabelApp.train``, which a server
runs in its training process). These tests make those same calls in this process, on the folder that
``scripts/package_bundle.py`` writes: ``train.yaml`` alone, as the stock task reads it, with MONAI Label's
overrides (``train#dataset#data`` / ``validate#dataset#data`` from the datastore, ``device`` as a name, a
``CheckpointLoader`` put first in ``train#handlers`` once ``models/model.pt`` exists). The packaged configs are
switched to the tiny random-encoder profile, one view per slice and no DataLoader workers, for speed; the datastore
is a studies folder of three labelled synthetic slices. The trained ``models/model.pt`` is loaded by the stock
``BundleInferTask``, and the next request fine-tunes it.
"""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from scsam_monai.data.preprocessing import ImagePreprocessing

BUNDLE_NAME = "scsam_em_organelle_segmentation"
CONF = {"models": BUNDLE_NAME, "zoo_source": "github", "sam2": "false"}
"""The sample app's settings (``--conf``): the bundle in ``<app>/model/``, no Model Zoo look-up, no SAM2 models."""

QUICK_PROFILE = {
    "train.yaml": {
        "\ntiny_random_encoders: false\n": "\ntiny_random_encoders: true\n",
        "\nviews_per_image: 4\n": "\nviews_per_image: 1\n",
        '\nnum_workers: "$min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 2"\n': "\nnum_workers: 0\n",
    },
    "inference.yaml": {"\ntiny_random_encoders: false\n": "\ntiny_random_encoders: true\n"},
}
"""Lines of the packaged configs replaced for a quick CPU run (each must be there as written)."""

LABELLED = ("train_000", "train_001", "val_000")
"""The synthetic slices the datastore holds with a final label (val_split 0.2: two train, one validates)."""


def _package(repo_root: Path, app_dir: Path) -> Path:
    """The Model Zoo bundle written into ``app_dir/model/`` with :data:`QUICK_PROFILE`; no ``models/model.pt``."""
    from scripts.package_bundle import package

    bundle = package(repo_root / "bundle", app_dir / "model", name=BUNDLE_NAME)
    for name, replacements in QUICK_PROFILE.items():
        path = bundle / "configs" / name
        text = path.read_text()
        for old, new in replacements.items():
            assert old in text, f"{name} no longer holds {old.strip()!r}: update QUICK_PROFILE"
            text = text.replace(old, new)
        path.write_text(text)
    return bundle


def _datastore(synthetic: Path, studies: Path) -> Any:
    """A studies folder of the :data:`LABELLED` slices, opened as ``MONAILabelApp.init_datastore`` opens it."""
    from monailabel.config import settings
    from monailabel.datastore.local import LocalDatastore

    (studies / "labels" / "final").mkdir(parents=True)
    for name in LABELLED:
        shutil.copyfile(synthetic / "images" / f"{name}.tif", studies / f"{name}.tif")
        shutil.copyfile(synthetic / "labels" / f"{name}.tif", studies / "labels" / "final" / f"{name}.tif")
    return LocalDatastore(str(studies), extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT, auto_reload=False)


@pytest.fixture
def stock(repo_root, synthetic, tmp_path, monkeypatch):
    """(bundle folder, datastore); the run's folder is the working directory (train.yaml's relative paths,
    such as the embedding cache under ``dataset_dir``, land there), ``sys.path`` is restored afterwards."""
    pytest.importorskip("monailabel")
    monkeypatch.setattr(sys, "path", list(sys.path))  # BundleTrainTask leaves the bundle on it when a run fails
    monkeypatch.chdir(tmp_path)
    return _package(repo_root, tmp_path / "app"), _datastore(synthetic, tmp_path / "studies")


def _train(task: Any, datastore: Any, **request: Any) -> None:
    """A training request as ``MONAILabelApp.train`` runs it: a copy of the request, then the task."""
    task(copy.deepcopy({"model": BUNDLE_NAME, "max_epochs": 1, "device": "cpu", **request}), datastore)


def _messages(err: BaseException | None) -> str:
    """Every message of an exception and of the exceptions it was raised from."""
    lines = []
    while err is not None:
        lines.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(lines)


def _attached(handlers: list) -> list[str]:
    """Attach resolved train#handlers to an engine; the names of what was attached, in order."""
    from monai.handlers import CheckpointLoader

    from scsam_monai.engines.distributed import WeightConsistencyCheck

    engine = Engine(lambda engine, batch: None)
    engine.attached = []  # the stand-in lists' handlers note themselves here
    for handler in handlers:
        handler.attach(engine)
        if isinstance(handler, CheckpointLoader):
            engine.attached.append("CheckpointLoader")
        elif isinstance(handler, WeightConsistencyCheck):
            engine.attached.append("WeightConsistencyCheck")
    return engine.attached


def _stand_in(name: str) -> dict:
    """A handler config that notes ``name`` on the engine it is attached to."""
    return {"_target_": "types.SimpleNamespace", "attach": f"$lambda engine: engine.attached.append({name!r})"}


def test_stock_warm_start_extends_train_handlers_and_the_rank_split_holds(repo_root, tmp_path):
    """train#handlers is a list the stock task puts its CheckpointLoader into: first, before every handler, on
    one process and on every rank of the multi-GPU overlay (as the stock task runs it: its config exported, the
    overlay on top), where ranks > 0 leave rank 0's handlers out and all check their weights last."""
    pytest.importorskip("monailabel")
    from monailabel.tasks.train.bundle import BundleTrainTask

    task = BundleTrainTask(str(repo_root / "bundle"), {})
    handlers = copy.deepcopy(task.bundle_config.get("train#handlers", []))
    assert handlers and all(isinstance(h, dict) for h in handlers)  # what the stock task reads with .get
    (tmp_path / "model.pt").write_bytes(b"")  # it only looks whether the file is there
    task._load_checkpoint(str(tmp_path / "model.pt"), True, handlers)
    assert handlers[0]["_target_"] == "CheckpointLoader" and handlers[0]["load_dict"] == {"model": "$@network"}

    task.bundle_config.set(handlers, "train#handlers")  # the stock multi-GPU path: its overrides, exported
    exported = tmp_path / "monailabel_train.json"
    ConfigParser.export_config_file(task.bundle_config.config, str(exported), indent=2)
    stand_ins = {
        "network": "$torch.nn.Linear(2, 2)",
        "train#handlers_every_rank": [_stand_in("every rank 1"), _stand_in("every rank 2")],
        "train#handlers_main_rank": [_stand_in("rank 0 only")],
    }
    every = ["every rank 1", "every rank 2"]
    one_process = ConfigParser()
    one_process.read_config(str(exported))
    one_process.update(stand_ins)
    assert _attached(one_process.get_parsed_content("train#handlers")) == ["CheckpointLoader", *every, "rank 0 only"]
    for rank in (0, 1):
        ranks = ConfigParser()
        ranks.read_config([str(exported), str(repo_root / "bundle" / "configs" / "multi_gpu_train.yaml")])
        ranks.update({**stand_ins, "ddp_network": "@network", "not_main_rank": rank > 0})
        main = ["rank 0 only"] if rank == 0 else []
        expected = ["CheckpointLoader", *every, *main, "WeightConsistencyCheck"]
        assert _attached(ranks.get_parsed_content("train#handlers")) == expected, rank


@pytest.mark.parametrize(
    ("device", "cuda", "index"),
    [(None, False, None), ("cpu", False, None), ("cuda:1", True, 1), (torch.device("cuda", 0), True, 0)],
)
def test_device_may_be_a_name_or_a_torch_device(repo_root, device, cuda, index):
    """The stock task passes the device as a name ("cpu", "cuda:0"); every use of it takes either form."""
    configs = repo_root / "bundle" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.yaml"), str(configs / "multi_gpu_train.yaml")])
    if device is None:  # the default, a torch.device
        parser["device"] = "$torch.device('cpu')"
    else:
        parser["device"] = device
    assert parser.get_parsed_content("embedding_dtype") == (torch.float16 if cuda else torch.float32)
    assert parser.get_parsed_content("train#dataloader#pin_memory") is cuda
    assert parser.get_parsed_content("validate#dataloader#pin_memory") is cuda
    assert parser.get_parsed_content("ddp_network#device_ids") == ([index] if cuda else None)


def test_stock_request_without_validation_images_stops_at_the_start_up_checks(stock):
    """The datastore's items reach the run as overrides; the checks read them, not a datalist file (none here)."""
    from monailabel.tasks.train.bundle import BundleTrainTask

    bundle, datastore = stock
    task = BundleTrainTask(str(bundle), CONF)
    assert task.is_valid()
    with pytest.raises(Exception) as err:
        _train(task, datastore, val_split=0.0)  # the stock split: every image trains, none validates
    messages = _messages(err.value)
    assert "the run cannot start, 1 problem(s) found" in messages, messages
    assert "validate#dataset#data): the split 'validation' is empty; it needs at least one image." in messages
    assert not (bundle / "models" / "model.pt").exists()


@pytest.mark.slow
def test_stock_train_task_trains_the_head_the_stock_inference_loads_and_warm_starts_from_it(stock):
    """Request 1 trains from scratch and writes models/model.pt, which the stock BundleInferTask loads; request 2
    starts from models/model.pt (a marked copy of it, so that a start from scratch could not pass)."""
    from monailabel.tasks.infer.bundle import BundleInferTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    bundle, datastore = stock
    head = bundle / "models" / "model.pt"
    task = BundleTrainTask(str(bundle), CONF)
    assert task.is_valid() and not head.exists()

    _train(task, datastore)
    assert head.is_file(), sorted(p.name for p in head.parent.iterdir())
    # models/*.pt is what the stock tasks offer as models to load: only the served head, training state elsewhere
    assert sorted(p.name for p in head.parent.glob("*.pt")) == ["model.pt"]
    state = torch.load(head, map_location="cpu", weights_only=True)
    assert ImagePreprocessing.recorded(state) == ImagePreprocessing("per_image")
    infer = BundleInferTask(str(bundle), CONF)  # as the sample app builds it when the server starts
    assert infer.is_valid()
    (first, *_) = infer._config["model_filename"]  # /info's model list; 3D Slicer sends its first entry
    assert first == "model.pt"
    network = infer._get_network("cpu", {"model_filename": first})  # its loading of models/model.pt
    torch.testing.assert_close(network.state_dict(), state)

    # a start from scratch gives request 1's initial weights again (same seed); the marked bias is 1 away from them
    key = next(k for k, v in state.items() if k.endswith(".bias") and v.is_floating_point())
    marked = {**state, key: state[key] + 1.0}
    torch.save(marked, head)
    _train(task, datastore)
    assert task.bundle_config.get("train#handlers")[0]["_target_"] == "CheckpointLoader"
    tuned = torch.load(head, map_location="cpu", weights_only=True)
    # one epoch is one Adam step (learning rate 0.001) from the marked head
    assert (tuned[key] - marked[key]).abs().max() < 0.05, (tuned[key] - marked[key]).abs().max()
    torch.testing.assert_close(infer._get_network("cpu", None).state_dict(), tuned)  # reloaded: the file changed
