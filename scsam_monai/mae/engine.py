"""The MAE pre-training step for MONAI's ``SupervisedTrainer`` and its learning-rate schedule.

The trainer, optimizer and most handlers are MONAI's (wired in ``bundle/configs/pretrain_mae.yaml``); checkpoints
and resuming are the head training's :class:`~scsam_monai.engines.resume.TrainingCheckpoint`;
the step replaces ``SupervisedTrainer``'s forward/loss because an MAE has no label: the network masks the batch
and returns predictions and targets, the loss compares them on the masked patches. The schedule counts optimizer
steps, not epochs, so that warm-up and decay do not depend on how many slices a data set has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["MaeTrainStep", "warmup_cosine_schedule", "PREDICT_NOTHING_KEY"]

#: Output key of the loss that predicting nothing (all zeros) would give on the same batch and masks.
PREDICT_NOTHING_KEY = "predict_nothing"


class MaeTrainStep:
    """One MAE iteration (``SupervisedTrainer``'s ``iteration_update``): mask, reconstruct, loss, step.

    ``engine.network`` is a :class:`~scsam_monai.mae.model.MaskedAutoencoder` and ``engine.loss_function`` a
    :class:`~scsam_monai.mae.model.MaskedPatchLoss`. MONAI's iteration events are fired as in its own step.
    The output also holds :data:`PREDICT_NOTHING_KEY`: the loss of an all-zero prediction on the same targets
    and masks, the level a network that learned nothing settles at (about ``(n - 1) / n`` for per-patch
    normalised targets of ``n`` pixels), so that a loss is read against it and not against 1.0.

    Args:
        image_key: batch key of the images (B, 1, H, W) in [0, 1].
        amp_dtype: autocast dtype when the trainer's ``amp`` is on; bfloat16 needs no gradient scaler, float16
            uses the trainer's.
    """

    def __init__(self, image_key: str = Keys.IMAGE, amp_dtype: torch.dtype = torch.bfloat16) -> None:
        self.image_key = image_key
        self.amp_dtype = amp_dtype

    def __call__(self, engine: SupervisedTrainer, batchdata: Mapping[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device, non_blocking=engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        device_type = engine.state.device.type if isinstance(engine.state.device, torch.device) else "cpu"
        with torch.autocast(device_type=device_type, dtype=self.amp_dtype, enabled=bool(engine.amp)):
            out = engine.network(images)
        engine.state.output = {Keys.IMAGE: images, Keys.PRED: out["pred"], "mask": out["mask"]}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(out["pred"], out["target"], out["mask"])
        with torch.no_grad():
            nothing = engine.loss_function(torch.zeros_like(out["target"]), out["target"], out["mask"])
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None and self.amp_dtype == torch.float16:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output = {Keys.IMAGE: images.detach(), Keys.LOSS: loss.detach(), PREDICT_NOTHING_KEY: nothing}
        return engine.state.output


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Learning-rate factor per optimizer step: linear warm-up to 1, then half a cosine to 0 (MAE's schedule).

    Step it once per optimizer step (MONAI's ``LrScheduleHandler(epoch_level=False)``). Factor after ``s``
    completed steps: ``(s + 1) / warmup_steps`` while ``s < warmup_steps``, then
    ``0.5 * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps)))``. Counted in steps, the schedule
    of a 20-slice and of a 2,000-slice volume is the same for the same step budget (an epoch-level schedule
    warms a small set up over a few steps and a large one over thousands). The factor is a function of the step
    and of these two numbers only: a checkpoint stores the step (``last_epoch``), not the numbers, so a run
    resumed with a larger ``total_steps`` follows the longer schedule from where it stopped.

    Args:
        optimizer: the optimizer.
        warmup_steps: steps of linear warm-up (clipped to ``total_steps``; 0 for none).
        total_steps: steps of the whole run.
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps} and {warmup_steps}.")
    warmup = min(int(warmup_steps), int(total_steps))
    total = int(total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(1, total - warmup), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
