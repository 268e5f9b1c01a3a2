"""One ScSAM training iteration for MONAI's ``SupervisedTrainer`` (its ``iteration_update`` hook).

The stock iteration computes ``loss_function(pred, label)``; ScSAM's loss also needs the aligned streams,
the prototypes and the class embeddings, which the head returns when its ``forward`` gets the label. The
call goes through ``engine.network(...)``, so a ``DistributedDataParallel``-wrapped head synchronises its
gradients. Everything else (optimizer, AMP scaler, handlers, events) stays MONAI's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from scsam_monai.engines.batch import EmbeddingBatch
from scsam_monai.losses import ScSAMLoss

__all__ = ["ScSAMTrainStep"]


class ScSAMTrainStep:
    """Forward with auxiliary outputs, ScSAM loss, backward and optimizer step.

    Args:
        loss: the :class:`~scsam_monai.losses.ScSAMLoss`.
        amp_dtype: autocast dtype when the trainer's ``amp`` is on (bf16 or fp16; fp16 uses the GradScaler).
    """

    def __init__(self, loss: ScSAMLoss, amp_dtype: torch.dtype = torch.float16) -> None:
        self.loss = loss
        self.amp_dtype = amp_dtype
        self.prepare = EmbeddingBatch(full_resolution=False)

    def __call__(self, engine: SupervisedTrainer, batchdata: Mapping[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        sam, label, (mae,), _ = self.prepare(batchdata, engine.state.device, engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        device_type = engine.state.device.type if isinstance(engine.state.device, torch.device) else "cpu"
        with torch.autocast(device_type=device_type, dtype=self.amp_dtype, enabled=bool(engine.amp)):
            logits, aux = engine.network(sam, mae, label=label)
            terms = self.loss(logits, label, aux)
        engine.state.output = {Keys.IMAGE: sam, Keys.LABEL: label, Keys.PRED: logits}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = terms["loss"]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None and self.amp_dtype == torch.float16:
            engine.scaler.scale(terms["loss"]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            terms["loss"].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.output["loss_terms"] = {k: float(v.detach()) for k, v in terms.items()}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
