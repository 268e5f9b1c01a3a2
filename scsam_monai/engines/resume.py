"""Resumable training: one atomic checkpoint of everything a run needs to continue exactly.

MONAI's ``CheckpointSaver``/``CheckpointLoader`` save and load objects, but they neither capture the random
number generators nor write atomically beside a resumable-run flag; this handler does both. After each epoch
(and after that epoch's validation) it writes ``path`` with the network, optimizer, LR scheduler, trainer
epoch/iteration, the learning-curve history and the torch / numpy / Python RNG states; with ``resume=True`` a
new run loads it when training starts and continues from the next epoch. Because the RNG states are those
the next epoch would have started with, an interrupted and resumed run reaches the same weights as an
uninterrupted one with the same seed.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from scsam_monai.atomic import atomic_write

__all__ = ["RngState", "TrainingCheckpoint"]

logger = logging.getLogger(__name__)


def _unwrap(obj: Any) -> Any:
    """The module inside ``DistributedDataParallel`` / ``DataParallel``, so checkpoint keys carry no ``module.``."""
    if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return obj.module
    return obj


class RngState:
    """The torch (CPU and CUDA), numpy and Python RNG states as a weights-only-loadable state dict."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        name, pos, has_gauss, gauss = state["numpy_meta"]
        np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class TrainingCheckpoint:
    """Save a resumable training state after every epoch, and resume from it when asked.

    Attach it to the trainer first in the handler list (so that it loads before other handlers start).

    Args:
        path: the checkpoint file (e.g. ``models/last.pt``), replaced atomically after each epoch.
        objects: objects with ``state_dict``/``load_state_dict`` (network, optimizer, lr_scheduler, handlers).
        resume: load ``path`` when training starts, if it exists.
    """

    def __init__(self, path: str | Path, objects: Mapping[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.objects = dict(objects)
        self.resume = resume
        self.rng = RngState()
        self._pending_rng: Mapping[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_rng)

    def _on_started(self, engine: Engine) -> None:
        # Registered now, when every handler is attached, so the save runs after validation and the learning
        # curve at the end of each epoch and captures the RNG state the next epoch starts with.
        if not engine.has_event_handler(self._save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        if self.resume and self.path.is_file():
            self._load(engine)

    def _save(self, engine: Engine) -> None:
        # Distributed runs: every rank holds the same state (DDP keeps the weights equal), rank 0 writes it,
        # and every rank loads it on resume.
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.objects.items()}
        state["trainer"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        state["rng"] = self.rng.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.path, lambda h: h.write(buffer.getvalue()))

    def _load(self, engine: Engine) -> None:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure becomes one clear message
            raise ValueError(f"{self.path}: cannot resume from this checkpoint ({err}).") from err
        missing = [name for name in (*self.objects, "trainer", "rng") if name not in state]
        if missing:
            raise ValueError(f"{self.path}: not a resumable training checkpoint (missing {missing}).")
        for name, obj in self.objects.items():
            _unwrap(obj).load_state_dict(state[name])
        engine.state.epoch = int(state["trainer"]["epoch"])
        engine.state.iteration = int(state["trainer"]["iteration"])
        self._pending_rng = state["rng"]
        logger.info(
            "Resumed from %s at epoch %d (iteration %d).", self.path, engine.state.epoch, engine.state.iteration
        )
        if engine.state.epoch >= engine.state.max_epochs:
            logger.info("The checkpointed run had already finished all %d epochs.", engine.state.max_epochs)

    def _restore_rng(self, engine: Engine) -> None:
        # Applied when the next epoch starts, not at load time: validation run before it (exec_at_start)
        # would otherwise draw from the restored generators.
        if self._pending_rng is not None:
            self.rng.load_state_dict(self._pending_rng)
            self._pending_rng = None
