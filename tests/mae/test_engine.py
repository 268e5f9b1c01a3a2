"""Tests of the MAE pre-training's learning-rate schedule, resume lookup and checkpointable handlers."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
from ignite.engine import Engine, Events

from scsam_monai.mae.engine import find_resume_checkpoint, warmup_cosine_schedule
from scsam_monai.mae.handlers import EngineState, EpochSeed, LossHistory


def _lrs(warmup: int, total: int, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine_schedule(optimizer, warmup_epochs=warmup, max_epochs=total)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_warmup_then_cosine():
    lrs = _lrs(2, 6, 6)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    assert _lrs(0, 4, 4)[0] == pytest.approx(1.0)


def test_schedule_state_holds_the_epoch_not_the_length():
    """A resumed run with a longer max_epochs follows the longer schedule from the saved epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    short = warmup_cosine_schedule(optimizer, warmup_epochs=0, max_epochs=4)
    for _ in range(2):
        optimizer.step()
        short.step()
    state = short.state_dict()
    optimizer2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    longer = warmup_cosine_schedule(optimizer2, warmup_epochs=0, max_epochs=8)
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
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    history.attach(engine)
    engine.run([1, 3], max_epochs=2)
    assert history.state_dict() == {"epochs": [1, 2], "losses": [2.0, 2.0]}
    assert engine.state.metrics["mae_epoch_loss"] == 2.0
    assert (tmp_path / "mae_loss.png").stat().st_size > 1000 and (tmp_path / "mae_loss.json").is_file()
    restored = LossHistory(tmp_path)
    restored.load_state_dict(history.state_dict())
    assert restored.epochs == [1, 2] and restored.losses == [2.0, 2.0]


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
