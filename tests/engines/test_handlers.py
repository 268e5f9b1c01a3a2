"""Tests of scsam_monai.engines handlers, batches, inference helpers and checkpoint loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch
from ignite.engine import Engine, Events

from scsam_monai.data.transforms import merge_class_logits
from scsam_monai.engines.batch import EmbeddingBatch
from scsam_monai.engines.handlers import LearningCurve, MetricsReport, OverlayWriter, TrainableParameterLogger
from scsam_monai.engines.inference_inputs import image_list
from scsam_monai.metrics import SegmentationScoresHandler
from scsam_monai.networks.build import build_scsam_head
from scsam_monai.networks.checkpoints import load_head_weights


def test_merge_class_logits_rule():
    logits = torch.full((3, 1, 4), -5.0)
    logits[0, 0, 0] = 2.0  # class 1 wins
    logits[1, 0, 1] = 3.0
    logits[0, 0, 1] = 1.0  # class 2 has the higher logit
    logits[2, 0, 2] = -0.1  # highest but sigmoid < 0.5 -> background
    label = merge_class_logits(logits)
    assert label.shape == (1, 1, 4)
    assert label[0, 0].tolist() == [1, 2, 0, 0]
    assert merge_class_logits(logits, threshold=0.4)[0, 0, 2] == 3


def test_embedding_batch_full_resolution_and_mixed_sizes():
    batch = {
        "sam": torch.zeros(2, 256, 4, 4),
        "mae": torch.zeros(2, 512, 4, 4),
        "label": torch.zeros(2, 1, 8, 8),
        "input_size": torch.tensor([[16, 12], [16, 12]]),
        "original_size": torch.tensor([[8, 6], [8, 6]]),
    }
    sam, label, (mae,), kwargs = EmbeddingBatch(full_resolution=True)(batch)
    assert kwargs == {"input_size": (16, 12), "original_size": (8, 6)}
    assert EmbeddingBatch()(batch)[3] == {}
    batch["original_size"] = torch.tensor([[8, 6], [9, 6]])
    with pytest.raises(ValueError, match="batch_size 1"):
        EmbeddingBatch(full_resolution=True)(batch)


def _fake_evaluator(preds, labels, paths, handlers):
    def step(engine, batch):
        i = engine.state.iteration - 1
        engine.state.batch = [{"image_path": paths[i]}]
        return [{"pred": torch.as_tensor(preds[i])[None], "label": torch.as_tensor(labels[i])[None]}]

    engine = Engine(step)
    for h in handlers:
        h.attach(engine) if not isinstance(h, SegmentationScoresHandler) else h.attach(engine, "val_mean_dice")
    return engine


def test_metrics_report_and_overlay(tmp_path):
    paths = []
    preds, labels = [], []
    for i in range(2):
        image = (np.random.default_rng(i).random((16, 20)) * 255).astype(np.uint8)
        path = tmp_path / f"img{i}.tif"
        tifffile.imwrite(path, image)
        paths.append(str(path))
        label = np.zeros((16, 20), np.int64)
        label[2:8, 2:8] = 1
        labels.append(label)
        preds.append(label.copy())
    metric = SegmentationScoresHandler(
        num_classes=3, output_transform=lambda o: ([x["pred"] for x in o], [x["label"] for x in o])
    )
    report = MetricsReport(tmp_path / "out", metric_handler=metric, extra={"split": "val"})
    overlay = OverlayWriter(tmp_path / "out", max_images=2)
    engine = _fake_evaluator(preds, labels, paths, [metric, report, overlay])
    engine.run(range(2), max_epochs=1)
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert data["dice_per_class"]["nucleus"] == 1.0
    assert data["dice_per_class"]["mitochondria"] is None  # absent class: undefined, not 0 or 1
    assert data["split"] == "val"
    assert "| nucleus | 1.0000 |" in (tmp_path / "out" / "metrics.md").read_text()
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 1000
    assert not math.isnan(data["dice_mean"])


def test_learning_curve_records_untrained_validation_and_epochs(tmp_path):
    validator = Engine(lambda e, b: None)
    validator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(val_mean_dice=0.1 * e.state.epoch))
    trainer = Engine(lambda e, b: {"loss": torch.tensor(1.0 / e.state.iteration)})
    curve = LearningCurve(tmp_path, validator=validator)
    trainer.add_event_handler(Events.STARTED, lambda e: validator.run(range(1), max_epochs=1))
    curve.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run(range(1), max_epochs=e.state.epoch + 1))
    trainer.run(range(2), max_epochs=2)
    data = json.loads((tmp_path / "learning_curve.json").read_text())
    assert data["epoch"] == [1, 2] and data["val_epoch"][0] == 0
    assert data["train_loss"][0] == pytest.approx((1.0 + 0.5) / 2)
    assert (tmp_path / "learning_curve.png").is_file()


def test_image_list_sources_and_errors(tmp_path):
    for name in ("b.tif", "a.tif", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p["image"].split("/")[-1] for p in image_list(tmp_path)] == ["a.tif", "b.tif"]
    assert image_list(tmp_path / "c.png") == [{"image": str(tmp_path / "c.png")}]
    with pytest.raises(FileNotFoundError, match="missing"):
        image_list(tmp_path / "missing")
    with pytest.raises(ValueError, match="No image"):
        image_list(tmp_path, "*.nii.gz")
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"test": [{"image": "a.tif", "label": "b.tif"}]}))
    assert image_list(None, datalist=datalist, split="test") == [{"image": str(tmp_path / "a.tif")}]
    with pytest.raises(ValueError, match="no split"):
        image_list(None, datalist=datalist, split="validation")


def test_load_head_weights_formats_and_errors(tmp_path):
    torch.manual_seed(0)
    head = build_scsam_head(grid_size=16, canvas_size=64)
    torch.save(head.state_dict(), tmp_path / "plain.pt")
    torch.save({"network": head.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        other = build_scsam_head(grid_size=16, canvas_size=64)
        load_head_weights(other, tmp_path / name)
        assert torch.equal(other.prompt_encoder.prototypes, head.prompt_encoder.prototypes)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_head_weights(head, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_head_weights(build_scsam_head(grid_size=16, canvas_size=64, num_classes=2), tmp_path / "plain.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_head_weights(head, tmp_path / "bad.pt")


@pytest.mark.parametrize("paper", [None, 27.6e6])
def test_parameter_logger_names_the_paper_figure_only_when_given(caplog, paper):
    engine = Engine(lambda e, b: None)
    engine.network = torch.nn.Linear(2, 2)
    frozen = torch.nn.Linear(3, 1).requires_grad_(False)
    TrainableParameterLogger(frozen_modules=[frozen, None], paper_parameters=paper).attach(engine)
    with caplog.at_level("INFO", logger="scsam_monai.engines.handlers"):
        engine.run([0], max_epochs=1)
    assert engine.state.trainable_parameters == 6
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "Trainable parameters: 0.00M" in message and "frozen parameters: 0.00M" in message
    assert ("(paper: 27.6M)" in message) == (paper is not None)
    assert "paper" not in message or paper is not None


def test_checkpoint_saver_writes_atomically_and_only_cpu_tensors(tmp_path, monkeypatch):
    """model.pt loads on any device (MONAI Label warm-starts without map_location): every tensor went through .cpu(),
    and MONAI's file names hold (key_metric_filename, final_filename)."""
    from scsam_monai.engines.handlers import AtomicCheckpointSaver, CpuTensorsSaving

    network = torch.nn.Linear(3, 2)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": network}, save_final=True, final_filename="final.pt"
    )
    handler = saver._final_checkpoint.save_handler
    assert isinstance(handler, CpuTensorsSaving) and handler._atomic
    moved = []
    real_cpu = torch.Tensor.cpu

    def cpu(self, *args, **kwargs):
        moved.append(self.shape)
        return real_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    engine = Engine(lambda engine, batch: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["final.pt"]
    state = torch.load(tmp_path / "final.pt", weights_only=True)
    assert sorted(moved) == sorted(v.shape for v in network.state_dict().values())
    torch.testing.assert_close(state, network.state_dict())
