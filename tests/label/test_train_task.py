"""How the train task turns the datastore's labelled images into the bundle's datalist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("monailabel")

from scsam_monai.label.train import split_datalist, training_slices  # noqa: E402


def test_2d_pairs_are_used_in_place_and_stacks_give_their_annotated_slices(tmp_path):
    tifffile.imwrite(tmp_path / "slice.tif", np.arange(48 * 40, dtype=np.uint16).reshape(48, 40))
    tifffile.imwrite(tmp_path / "slice_label.tif", np.ones((48, 40), np.uint8))
    stack = np.random.default_rng(0).integers(0, 255, (4, 48, 40), dtype=np.uint8)
    labels = np.zeros((4, 48, 40), np.uint8)
    labels[1, 5:9, 5:9] = 2
    labels[3, 0, 0] = 3
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "stack_label.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "bad_label.tif", np.full((48, 40), 9, np.uint8))
    pairs = [
        {"image": str(tmp_path / "slice.tif"), "label": str(tmp_path / "slice_label.tif")},
        {"image": str(tmp_path / "stack.tif"), "label": str(tmp_path / "stack_label.tif")},
        {"image": str(tmp_path / "slice.tif"), "label": str(tmp_path / "bad_label.tif")},  # skipped: value 9
    ]
    records = training_slices(pairs, tmp_path / "slices", num_classes=3)
    assert records[0] == pairs[0]
    assert [r["image"].rsplit("/", 1)[1] for r in records[1:]] == ["stack_z0001_image.tif", "stack_z0003_image.tif"]
    np.testing.assert_array_equal(tifffile.imread(records[1]["image"]), stack[1])
    np.testing.assert_array_equal(tifffile.imread(records[2]["label"]), labels[3])
    assert len(records) == 3


def test_split_keeps_one_validation_slice_at_least_and_reuses_a_single_one():
    records = [{"image": f"{i}.tif", "label": f"{i}_l.tif"} for i in range(10)]
    split = split_datalist(records, val_split=0.2)
    assert len(split["training"]) == 8 and len(split["validation"]) == 2
    assert not {r["image"] for r in split["training"]} & {r["image"] for r in split["validation"]}
    assert split == split_datalist(list(reversed(records)), val_split=0.2)  # seeded, order-independent
    assert len(split_datalist(records[:2], val_split=0.01)["validation"]) == 1
    one = split_datalist(records[:1], val_split=0.2)
    assert one["training"] == one["validation"] == records[:1]


def _head_state(settings, image_normalization: str) -> dict:
    import torch

    from scsam_monai.data.preprocessing import ImagePreprocessing

    torch.manual_seed(0)
    head = settings.parser("train.yaml").get_parsed_content("network_def").head
    return ImagePreprocessing.of(image_normalization).attach(head).state_dict()


@pytest.fixture()
def settings():
    from scsam_monai.label.bundle import BundleSettings

    return BundleSettings.from_conf(
        {"configs": "demo.yaml", "device": "cpu", "overrides": '{"num_workers": 0, "mae_checkpoint": null}'}
    )


def test_warm_start_is_a_checkpoint_loader_of_the_served_head_when_it_fits(tmp_path, settings):
    import torch

    from scsam_monai.label.train import ScSAMTrainTask

    served = tmp_path / "model" / "model.pt"
    task = ScSAMTrainTask(settings, served, tmp_path / "train")
    handlers: list = ["@train#checkpoint", {"_target_": "LrScheduleHandler"}]
    task._load_checkpoint("bundle/models/model.pt", True, handlers)
    assert len(handlers) == 2  # no served head yet: from scratch
    served.parent.mkdir()
    torch.save(_head_state(settings, "prepared"), served)
    task._load_checkpoint("bundle/models/model.pt", True, handlers)
    assert len(handlers) == 2  # trained with another normalisation: from scratch
    torch.save(_head_state(settings, "per_image"), served)
    task._load_checkpoint("bundle/models/model.pt", "false", handlers)
    assert len(handlers) == 2  # a client's "pretrained": "false"
    task._load_checkpoint("bundle/models/model.pt", True, handlers)
    task._load_checkpoint("bundle/models/model.pt", True, handlers)  # never two loaders
    assert handlers[1:] == ["@train#checkpoint", {"_target_": "LrScheduleHandler"}]
    assert handlers[0] == {
        "_target_": "CheckpointLoader",
        "load_path": str(served.resolve()),
        "load_dict": {"model": "$@network"},
        "strict": True,
        "map_location": "cpu",
    }


def test_a_request_runs_the_bundle_training_on_the_datastore_and_serves_its_best_head(
    tmp_path, settings, synthetic, monkeypatch
):
    """``BundleTrainTask.__call__`` through the app's hooks, with ``monai.bundle.run`` replaced by a stand-in."""
    import json

    import monai.bundle
    import torch
    from monailabel.tasks.train.bundle import BundleTrainTask

    from scsam_monai.label.datastore import CheckedLocalDatastore
    from scsam_monai.label.train import ScSAMTrainTask

    from .conftest import make_studies

    studies = make_studies(synthetic, tmp_path / "studies")
    datastore = CheckedLocalDatastore(str(studies), num_classes=3, auto_reload=False)
    served = tmp_path / "model" / "model.pt"
    served.parent.mkdir()
    torch.save(_head_state(settings, "per_image"), served)
    best = _head_state(settings, "per_image")
    best["mask_decoder.iou_prediction_head.layers.0.bias"] = torch.full_like(
        best["mask_decoder.iou_prediction_head.layers.0.bias"], 7.0
    )
    runs: list[dict] = []

    def fake_run(run_id, meta_file, config_file):
        overrides = json.loads(Path(config_file[-1]).read_text())
        runs.append({"run_id": run_id, "meta_file": meta_file, "config_file": config_file, "overrides": overrides})
        Path(overrides["ckpt_dir"]).mkdir(parents=True)
        torch.save(best, Path(overrides["ckpt_dir"]) / "model.pt")
        (Path(overrides["output_dir"]) / "learning_curve.json").write_text(json.dumps({"val_metric": [0.1, 0.4, 0.3]}))

    monkeypatch.setattr(monai.bundle, "run", fake_run)
    task = ScSAMTrainTask(settings, served, tmp_path / "train", max_epochs=5)
    assert isinstance(task, BundleTrainTask)
    stats = task({"model": "scsam", "max_epochs": 2, "views_per_image": 1, "multi_gpu": True}, datastore)

    (run,) = runs
    overrides = run["overrides"]
    configs = settings.configs_dir
    assert run["run_id"] == "training" and run["meta_file"] == str(configs / "metadata.json")
    assert run["config_file"][:2] == [str(configs / "train.yaml"), str(configs / "demo.yaml")]
    run_dir = Path(stats["run_dir"])
    assert Path(run["config_file"][2]) == run_dir / "label_overrides.json"
    datalist = json.loads((run_dir / "datalist.json").read_text())
    assert overrides["train#dataset#data"] == datalist["training"]
    assert overrides["validate#dataset#data"] == datalist["validation"]
    assert len(datalist["training"]) == 3 and len(datalist["validation"]) == 1  # train_000..002, val_000
    assert overrides["datalist"] == str(run_dir / "datalist.json")
    assert overrides["cache_dir"] == str((tmp_path / "train" / "embedding_cache").resolve())
    assert overrides["ckpt_dir"] == str(run_dir / "models") and overrides["output_dir"] == str(run_dir)
    assert overrides["device"] == "$torch.device('cpu')"
    assert overrides["train#trainer#max_epochs"] == 2 and overrides["views_per_image"] == 1
    assert overrides["bundle_root"] == str(settings.bundle_dir)
    assert overrides["num_workers"] == 0 and overrides["mae_checkpoint"] is None  # the app's overrides, nulls too
    assert overrides["train#handlers_every_rank"][0]["load_path"] == str(served.resolve())  # warm start
    assert "tracking" not in overrides

    loaded = torch.load(served, weights_only=True)
    assert torch.equal(
        loaded["mask_decoder.iou_prediction_head.layers.0.bias"], best["mask_decoder.iou_prediction_head.layers.0.bias"]
    )
    assert stats["labelled_images"] == 4 and stats["epochs"] == 2
    assert stats["best_val_mean_dice"] == 0.4 and stats["start_val_mean_dice"] == 0.1
    assert task.stats() == stats
