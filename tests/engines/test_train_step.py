"""Tests of the ScSAM training iteration inside MONAI's SupervisedTrainer."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from scsam_monai.engines.train_step import ScSAMTrainStep
from scsam_monai.losses import ScSAMLoss
from scsam_monai.networks.build import build_scsam_head
from tests.helpers import NATIVE_BF16_ONLY, tiny_encoder


def _batch(sam_encoder, mae_encoder, n: int = 2):
    torch.manual_seed(0)
    images = torch.rand(n, 1, 64, 64)
    label = torch.zeros(n, 1, 256, 256, dtype=torch.long)
    label[:, :, 20:120, 20:120] = 1
    label[:, :, 150:200, 30:60] = 2
    label[:, :, 200:230, 200:230] = 3
    return [{"sam": sam_encoder(images), "mae": mae_encoder(images), "label": label}]


def test_one_step_updates_only_the_head_and_leaves_encoders_unchanged():
    sam_encoder = tiny_encoder("sam")
    mae_encoder = tiny_encoder("mae")
    before_sam = {k: v.clone() for k, v in sam_encoder.state_dict().items()}
    before_mae = {k: v.clone() for k, v in mae_encoder.state_dict().items()}
    torch.manual_seed(0)
    head = build_scsam_head(canvas_size=256)
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    loss = ScSAMLoss()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_batch(sam_encoder, mae_encoder),
        network=head,
        optimizer=optimizer,
        loss_function=loss,
        iteration_update=ScSAMTrainStep(loss),
        decollate=False,
    )
    trainer.run()
    output = trainer.state.output
    assert set(output["loss_terms"]) == {"loss", "cos", "ntx", "dice"}
    assert output["pred"].shape == (2, 3, 256, 256)
    expected = 0.2 * output["loss_terms"]["cos"] + output["loss_terms"]["ntx"] + output["loss_terms"]["dice"]
    assert abs(output["loss_terms"]["loss"] - expected) < 1e-4
    for k, v in sam_encoder.state_dict().items():
        assert torch.equal(v, before_sam[k]), k
    for k, v in mae_encoder.state_dict().items():
        assert torch.equal(v, before_mae[k]), k
    after = head.state_dict()
    assert not torch.equal(after["prompt_encoder.prototypes"], head_before["prompt_encoder.prototypes"])
    assert not torch.equal(after["fusion.align_mae.0.weight"], head_before["fusion.align_mae.0.weight"])
    for k in head_before:
        if k.startswith("sam_prompt_encoder."):
            assert torch.equal(after[k], head_before[k]), k  # SAM's prompt embeddings stay frozen


@pytest.mark.parametrize(
    "amp_dtype", [None, pytest.param(torch.bfloat16, marks=NATIVE_BF16_ONLY)], ids=["fp32", "cpu_bf16_autocast"]
)
def test_repeated_steps_reduce_the_loss(amp_dtype):
    """Six steps lower the loss, in float32 and under CPU bf16 autocast (``amp=True`` on a CPU; no GradScaler)."""
    sam_encoder = tiny_encoder("sam")
    mae_encoder = tiny_encoder("mae")
    torch.manual_seed(0)
    head = build_scsam_head(canvas_size=256)
    loss = ScSAMLoss()
    step = ScSAMTrainStep(loss) if amp_dtype is None else ScSAMTrainStep(loss, amp_dtype=amp_dtype)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=6,
        train_data_loader=_batch(sam_encoder, mae_encoder),
        network=head,
        optimizer=torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-3),
        loss_function=loss,
        iteration_update=step,
        decollate=False,
        amp=amp_dtype is not None,
    )
    losses, dtypes = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss_terms"]["loss"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: dtypes.append(e.state.output["pred"].dtype))
    trainer.run()
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(p.dtype == torch.float32 for p in head.parameters())  # master weights stay float32
    if amp_dtype is not None:
        assert amp_dtype in dtypes  # the head really ran under the autocast
