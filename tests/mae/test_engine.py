"""Tests of the MAE pre-training's learning-rate schedule, resume lookup and checkpointable handlers."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from ignite.engine import Engine, Events

from scsam_monai.mae.engine import PREDICT_NOTHING_KEY, find_resume_checkpoint, warmup_cosine_schedule
from scsam_monai.mae.handlers import EngineState, EpochSeed, LossHistory


def _lrs(warmup: int, total: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=warmup, total_steps=total)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_warmup_then_cosine():
    lrs = _lrs(2, 6, 6)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    assert _lrs(0, 4, 4)[0] == pytest.approx(1.0)
    assert _lrs(10, 4, 4) == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up clipped to the run
    with pytest.raises(ValueError, match="total_steps"):
        _lrs(1, 0, 1)


def test_schedule_state_holds_the_step_not_the_length():
    """A resumed run with a longer budget follows the longer schedule from the saved step."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    short = warmup_cosine_schedule(optimizer, warmup_steps=0, total_steps=4)
    for _ in range(2):
        optimizer.step()
        short.step()
    state = short.state_dict()
    optimizer2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    longer = warmup_cosine_schedule(optimizer2, warmup_steps=0, total_steps=8)
    longer.load_state_dict(state)
    optimizer2.step()
    longer.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 8)))


def test_find_resume_checkpoint(tmp_path):
    assert find_resume_checkpoint(tmp_path, False) is None and find_resume_checkpoint(tmp_path, None) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_resume_checkpoint(tmp_path, True)
    older, newer = tmp_path / "checkpoint_epoch=10.pt", tmp_path / "checkpoint_epoch=20.pt"
    final = tmp_path / "mae_checkpoint_final.pt"
    for i, path in enumerate((older, newer, final)):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    assert find_resume_checkpoint(tmp_path, True) == str(final)
    assert find_resume_checkpoint(tmp_path, "latest") == str(final)
    os.utime(newer, (time.time(), time.time()))
    assert find_resume_checkpoint(tmp_path, True) == str(newer)
    assert find_resume_checkpoint(tmp_path, str(older)) == str(older)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "nope.pt"))


def test_loss_history_is_checkpointable(tmp_path):
    history = LossHistory(tmp_path)
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b)), PREDICT_NOTHING_KEY: torch.tensor(1.0)})
    engine.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    history.attach(engine)
    engine.run([1, 3], max_epochs=2)
    assert history.state_dict() == {
        "epochs": [1, 2],
        "steps": [2, 4],
        "losses": [2.0, 2.0],
        "predict_nothing": [1.0, 1.0],
        "learning_rates": [0.5, 0.5],
    }
    assert engine.state.metrics["mae_epoch_loss"] == 2.0
    assert (tmp_path / "mae_loss.png").stat().st_size > 1000
    assert json.loads((tmp_path / "mae_loss.json").read_text()) == {
        "epoch": [1, 2],
        "step": [2, 4],
        "loss": [2.0, 2.0],
        "predict_nothing": [1.0, 1.0],
        "lr": [0.5, 0.5],
    }
    restored = LossHistory(tmp_path)
    restored.load_state_dict(history.state_dict())
    assert restored.state_dict() == history.state_dict()
    older = LossHistory(tmp_path)
    older.load_state_dict({"epochs": [1], "losses": [2.0]})  # a checkpoint of the epoch-only history
    assert older.epochs == [1] and older.steps == [] and older.losses == [2.0]


def test_engine_state_checkpoints_the_engine_it_is_attached_to():
    state = EngineState()
    with pytest.raises(RuntimeError, match="not attached"):
        state.state_dict()
    engine = Engine(lambda e, b: None)
    state.attach(engine)
    engine.run([0, 0, 0], max_epochs=2)
    saved = state.state_dict()
    assert saved["iteration"] == 6 and saved["epoch_length"] == 3 and saved["max_epochs"] == 2
    other = Engine(lambda e, b: None)
    bound = EngineState()
    bound.attach(other)
    bound.load_state_dict(saved)
    assert other.state.epoch == 2 and other.state.iteration == 6


def test_epoch_seed_depends_on_seed_and_epoch_only():
    seeder = EpochSeed(seed=5)
    engine = Engine(lambda e, b: torch.rand(1).item())
    draws: list[float] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: draws.append(e.state.output))
    seeder.attach(engine)
    engine.run([0], max_epochs=3)
    torch.manual_seed(seeder.epoch_seed(2))
    assert draws[1] == torch.rand(1).item()  # epoch 2 draws from seed(5, 2), whatever came before
    again: list[float] = []
    engine2 = Engine(lambda e, b: torch.rand(1).item())
    engine2.add_event_handler(Events.ITERATION_COMPLETED, lambda e: again.append(e.state.output))
    EpochSeed(seed=5).attach(engine2)
    engine2.run([0], max_epochs=3)
    assert again == draws and len(set(draws)) == 3


def test_train_step_reports_the_predict_nothing_level():
    """The step's output carries the loss of an all-zero prediction: (n - 1) / n for normalised n-pixel patches."""
    from monai.engines import SupervisedTrainer

    from scsam_monai.mae.engine import MaeTrainStep
    from scsam_monai.mae.model import MaskedAutoencoder, MaskedPatchLoss

    torch.manual_seed(0)
    network = MaskedAutoencoder(arch="tiny", depth=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[{"image": torch.rand(2, 1, 64, 64)}],
        epoch_length=1,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=MaskedPatchLoss(),
        iteration_update=MaeTrainStep(),
        decollate=False,
    )
    trainer.run()
    output = trainer.state.output
    assert float(output[PREDICT_NOTHING_KEY]) == pytest.approx(15 / 16, rel=1e-3)  # 4x4 patches, unbiased variance
    assert output["image"].shape == (2, 1, 64, 64) and float(output["loss"]) > 0
