"""Planning: the training budget of a row, early stopping with its record, and the nnU-Net-style DynUNet plan."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events

from scsam_monai.baselines.planning import plan_budget, plan_dynunet
from scsam_monai.baselines.stopping import RECORD_FILENAME, ValidationEarlyStopping, batch_size_of
from scsam_monai.baselines.supervised import nnunet_dynunet


def test_isotropic_patch_pools_down_to_the_smallest_feature_map():
    plan = plan_dynunet((128, 128))
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4: five poolings, then the bottleneck
    assert plan["strides"] == [[1, 1]] + [[2, 2]] * 5
    assert plan["kernel_size"] == [[3, 3]] * 6
    assert plan["upsample_kernel_size"] == [[2, 2]] * 5
    assert plan["filters"] == [32, 64, 128, 256, 512, 512]  # doubled, capped at 512


def test_anisotropic_axis_waits_with_pooling_and_gets_flat_kernels():
    plan = plan_dynunet((64, 128), spacing=(8.0, 2.0))
    assert plan["kernel_size"][0] == [1, 3]  # the coarse axis is 4x the fine one
    assert plan["strides"][1] == [1, 2]  # only the fine axis is pooled first
    assert plan["strides"][2] == [2, 2]  # now within a factor 2: both


def test_pool_cap_and_non_square_sizes():
    plan = plan_dynunet((512, 256), max_pools=3, base_filters=8)
    assert plan["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2]]
    assert plan["filters"] == [8, 16, 32, 64]


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        plan_dynunet((18, 18))  # 18 -> 9, and 9 (>= 8) cannot be halved
    with pytest.raises(ValueError, match="differ in length"):
        plan_dynunet((32, 32), spacing=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        plan_dynunet((0, 32))


def test_planned_dynunet_runs_and_keeps_the_size():
    net = nnunet_dynunet(patch_size=(32, 32), out_channels=4, base_filters=4).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32)).shape == (1, 4, 32, 32)


def test_deep_supervision_outputs_are_weighted_in_training_and_absent_in_evaluation():
    from monai.losses import DiceCELoss

    from scsam_monai.baselines.supervised import StackedDeepSupervisionLoss

    net = nnunet_dynunet(patch_size=(64, 64), out_channels=4, base_filters=4)
    target = torch.randint(0, 4, (2, 1, 64, 64))
    stacked = net.train()(torch.rand(2, 1, 64, 64))
    assert stacked.shape == (2, 3, 4, 64, 64)  # full-size output + 2 deep-supervision heads
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = StackedDeepSupervisionLoss(base)
    expected = sum(w * base(stacked[:, i], target) for i, w in enumerate((1.0, 0.5, 0.25)))
    assert torch.allclose(loss(stacked, target), expected)
    with torch.no_grad():
        single = net.eval()(torch.rand(1, 1, 64, 64))
    assert single.shape == (1, 4, 64, 64)
    assert torch.allclose(loss(single, target[:1]), base(single, target[:1]))


def test_budget_gives_every_row_the_same_samples_and_validation_points():
    scsam = plan_budget(budget_per_slice=400, num_slices=10, views_per_epoch=4, batch_size=32, views_per_validation=4)
    unet = plan_budget(budget_per_slice=400, num_slices=10, views_per_epoch=1, batch_size=8, views_per_validation=4)
    assert (scsam.max_epochs, unet.max_epochs) == (100, 400)
    assert scsam.budget_samples == unet.budget_samples == 4000
    assert (scsam.validation_interval, unet.validation_interval) == (1, 4)
    assert (scsam.steps_per_epoch, scsam.max_steps) == (2, 200)  # ceil(40 / 32) steps per epoch
    assert (unet.steps_per_epoch, unet.max_steps) == (2, 800)
    assert unet.overrides() == {"train#trainer#max_epochs": 400, "validate#interval": 4}


def test_budget_refuses_counts_that_cannot_plan():
    with pytest.raises(ValueError, match="less than one epoch"):
        plan_budget(budget_per_slice=2, num_slices=4, views_per_epoch=4, batch_size=8, views_per_validation=4)
    with pytest.raises(ValueError, match="num_slices"):
        plan_budget(budget_per_slice=8, num_slices=0, views_per_epoch=1, batch_size=8, views_per_validation=4)


def test_batch_size_of_collated_and_decollated_batches():
    assert batch_size_of({"sam": torch.zeros(5, 2), "name": ["a"] * 5}) == 5
    assert batch_size_of([torch.zeros(3, 1), torch.zeros(3)]) == 3
    assert batch_size_of([{"image": 1}, {"image": 2}]) == 2
    assert batch_size_of(torch.zeros(7, 1, 4, 4)) == 7


def _engines(scores, max_epochs, patience, tmp_path, batch=3, batches=2):
    """A trainer whose epochs each end with a validation returning the next score (epoch 0 = before training)."""
    trainer = Engine(lambda engine, batch: None)
    validator = Engine(lambda engine, batch: None)
    remaining = list(scores)

    @validator.on(Events.COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mean_dice"] = remaining.pop(0)

    def validate(_):
        validator.run([0])

    trainer.add_event_handler(Events.STARTED, validate)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    stopper = ValidationEarlyStopping(validator, patience=patience, output_dir=tmp_path, budget_samples=99)
    stopper.attach(trainer)
    trainer.run([torch.zeros(batch, 1)] * batches, max_epochs=max_epochs)
    return trainer, json.loads((tmp_path / RECORD_FILENAME).read_text())


def test_early_stopping_stops_after_patience_validations_without_gain_and_records_it(tmp_path):
    # epoch 0: 0.1, then 0.5 (best, epoch 2), then no gain for 2 validations -> stop after epoch 4 of 10
    trainer, record = _engines([0.1, 0.3, 0.5, 0.5, 0.4, 0.9, 0.9], 10, 2, tmp_path)
    assert trainer.state.epoch == 4
    assert record["stopped_early"] and record["stop_reason"].startswith("early stopping")
    assert (record["best_epoch"], record["best_score"]) == (2, 0.5)
    assert (record["epochs"], record["max_epochs"], record["validations"]) == (4, 10, 5)
    assert (record["optimizer_steps"], record["samples_seen"], record["budget_samples"]) == (8, 24, 99)


def test_a_row_that_keeps_improving_uses_its_budget(tmp_path):
    trainer, record = _engines([0.1, 0.2, 0.3, 0.4], 3, 2, tmp_path)
    assert trainer.state.epoch == 3 and not record["stopped_early"]
    assert record["stop_reason"] == "budget used (max_epochs reached)"
    assert (record["best_epoch"], record["samples_seen"]) == (3, 18)


def test_a_stop_signal_at_the_last_epoch_is_not_an_early_stop(tmp_path):
    trainer, record = _engines([0.5, 0.4, 0.3], 2, 2, tmp_path)
    assert trainer.state.epoch == 2 and not record["stopped_early"]
    assert record["stop_reason"].startswith("budget used") and "last 2 validations" in record["stop_reason"]


def test_no_patience_never_stops_early_but_still_records(tmp_path):
    trainer, record = _engines([0.5, float("nan"), 0.1, 0.1], 3, 0, tmp_path)
    assert trainer.state.epoch == 3 and not record["stopped_early"] and record["patience"] is None
    assert (record["best_epoch"], record["best_score"]) == (0, 0.5)  # NaN never counts as the best
