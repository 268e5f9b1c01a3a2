"""Tests of the MAE pre-training's learning-rate schedule, resume lookup and checkpointable handlers."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from ignite.engine import Engine, Events

from scsam_monai.engines.resume import TrainingCheckpoint, find_resume_checkpoint
from scsam_monai.mae.engine import PREDICT_NOTHING_KEY, warmup_cosine_schedule
from scsam_monai.mae.handlers import EpochSeed, LossHistory


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
    saved = [tmp_path / "checkpoint_epoch=*.pt", tmp_path / "mae_checkpoint_final.pt"]
    assert find_resume_checkpoint(False, saved) is None and find_resume_checkpoint(None, saved) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_resume_checkpoint(True, saved)
    older, newer = tmp_path / "checkpoint_epoch=10.pt", tmp_path / "checkpoint_epoch=20.pt"
    final = tmp_path / "mae_checkpoint_final.pt"
    (tmp_path / "other.pt").write_bytes(b"x")  # not a file this run writes
    for i, path in enumerate((older, newer, final)):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    assert find_resume_checkpoint(True, saved) == final
    assert find_resume_checkpoint("latest", saved) == final
    os.utime(newer, (time.time(), time.time()))
    assert find_resume_checkpoint(True, saved) == newer
    assert find_resume_checkpoint(str(older), saved) == older
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        find_resume_checkpoint(str(tmp_path / "nope.pt"), saved)


def _counting_engine(losses: list[float]) -> Engine:
    """An engine of 2 iterations per epoch whose step moves a weight by a random amount (from torch's RNG)."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)

    def step(engine, batch):
        optimizer.zero_grad()
        loss = (weight * torch.rand(1)).sum()
        loss.backward()
        optimizer.step()
        losses.append(float(weight.detach()))
        return {"loss": loss.detach()}

    engine = Engine(step)
    engine.weight, engine.optimizer = weight, optimizer
    return engine


def test_training_checkpoint_numbered_files_keep_and_final(tmp_path):
    """Numbered saves every ``interval`` epochs, the newest ``keep`` kept, the final one at the end; all resumable."""
    engine = _counting_engine([])
    checkpoint = TrainingCheckpoint(
        tmp_path / "checkpoint_epoch={epoch}.pt",
        objects={"weight": torch.nn.ParameterList([engine.weight]), "optimizer": engine.optimizer},
        interval=2,
        keep=2,
        final_path=tmp_path / "final.pt",
    )
    checkpoint.attach(engine)
    engine.run([0, 0], max_epochs=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=6.pt", "final.pt"]
    assert torch.load(tmp_path / "checkpoint_epoch=6.pt", weights_only=True)["trainer"] == {"epoch": 6, "iteration": 12}
    assert torch.load(tmp_path / "final.pt", weights_only=True)["trainer"] == {"epoch": 7, "iteration": 14}


def test_training_checkpoint_resumes_exactly_from_a_numbered_file(tmp_path):
    straight: list[float] = []
    engine = _counting_engine(straight)
    objects = {"weight": torch.nn.ParameterList([engine.weight]), "optimizer": engine.optimizer}
    TrainingCheckpoint(tmp_path / "a" / "checkpoint_epoch={epoch}.pt", objects=objects).attach(engine)
    torch.manual_seed(0)
    engine.run([0, 0], max_epochs=4)

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint_epoch=2.pt").write_bytes((tmp_path / "a" / "checkpoint_epoch=2.pt").read_bytes())
    resumed: list[float] = []
    engine2 = _counting_engine(resumed)
    objects2 = {"weight": torch.nn.ParameterList([engine2.weight]), "optimizer": engine2.optimizer}
    TrainingCheckpoint(tmp_path / "b" / "checkpoint_epoch={epoch}.pt", objects=objects2, resume=True).attach(engine2)
    torch.manual_seed(123)  # other draws than the saved RNG state: the checkpoint's must win
    engine2.run([0, 0], max_epochs=4)
    assert engine2.state.iteration == 8 and resumed == straight[4:]
    assert float(engine2.weight.detach()) == float(engine.weight.detach())


def test_training_checkpoint_saves_the_final_file_when_an_error_stops_training(tmp_path):
    engine = _counting_engine([])

    def fail_in_epoch_2(e):
        if e.state.iteration == 3:
            raise RuntimeError("stop")

    objects = {"weight": torch.nn.ParameterList([engine.weight])}
    TrainingCheckpoint(tmp_path / "last.pt", objects=objects, final_path=tmp_path / "final.pt").attach(engine)
    engine.add_event_handler(Events.ITERATION_COMPLETED, fail_in_epoch_2)
    with pytest.raises(RuntimeError, match="stop"):
        engine.run([0, 0], max_epochs=3)
    # one epoch completed, one iteration into the second: a resumed run finishes epoch 2 from its 2nd iteration
    assert torch.load(tmp_path / "final.pt", weights_only=True)["trainer"] == {"epoch": 1, "iteration": 3}
    resumed = _counting_engine([])
    objects = {"weight": torch.nn.ParameterList([resumed.weight])}
    TrainingCheckpoint(tmp_path / "last.pt", objects=objects, final_path=tmp_path / "final.pt", resume=True).attach(
        resumed
    )
    epochs: list[tuple[int, int]] = []
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: epochs.append((e.state.epoch, e.state.iteration)))
    resumed.run([0, 0], max_epochs=3)
    assert epochs == [(2, 4), (3, 5), (3, 6)]


def test_resume_without_a_checkpoint_is_an_error_and_writes_none(tmp_path):
    engine = _counting_engine([])
    checkpoint = TrainingCheckpoint(tmp_path / "last.pt", objects={}, resume=True, final_path=tmp_path / "final.pt")
    checkpoint.attach(engine)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        engine.run([0, 0], max_epochs=1)
    assert list(tmp_path.iterdir()) == []


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
    assert older.state_dict() == {
        "epochs": [1],
        "steps": [],
        "losses": [2.0],
        "predict_nothing": [],
        "learning_rates": [],
    }


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
