"""Resumable training: one atomic checkpoint of everything a run needs to continue exactly, and resuming from it.

The one resume mechanism of the package: the head training (``train.yaml``, ``train#checkpoint``) and the MAE
pre-training (``pretrain_mae.yaml``, ``train#checkpoint``) both attach a :class:`TrainingCheckpoint`. A checkpoint
holds the state dicts of the objects it was given (network, optimizer, LR scheduler, curves), the trainer's
epoch and iteration and the torch / numpy / Python RNG states, and is written atomically (temporary file, then
rename). With ``resume`` a new run loads it when training starts and continues from the next epoch. Because the
RNG states are those the next epoch would have started with, an interrupted and resumed run reaches the same
weights as an uninterrupted one with the same seed.

MONAI's ``CheckpointSaver``/``CheckpointLoader`` save and load objects, but they do not capture the random number
generators, a bundle config cannot hand them the trainer from inside the trainer's own handler list (a circular
reference) while this handler gets it from ``attach``, and MONAI's saver writes non-atomically.
"""

from __future__ import annotations

import io
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from scsam_monai.atomic import atomic_write

__all__ = ["RngState", "TrainingCheckpoint", "find_resume_checkpoint"]

logger = logging.getLogger(__name__)

_EPOCH_IN_NAME = re.compile(r"epoch=(\d+)")


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


def _saved_order(path: Path) -> tuple[float, float]:
    match = _EPOCH_IN_NAME.search(path.name)
    return (path.stat().st_mtime, float(match.group(1)) if match else math.inf)


def find_resume_checkpoint(resume: bool | str | Path | None, saved: Sequence[str | Path]) -> Path | None:
    """The checkpoint to resume from.

    Args:
        resume: False/None/"false": do not resume (returns None); True/"true"/"latest": the most recently written
            of the files ``saved`` names (a file written later wins, the final one over the numbered ones of the
            same moment); a path: that file.
        saved: the files a run writes; a name may hold glob characters (``checkpoint_epoch=*.pt``).

    Raises:
        FileNotFoundError: ``resume`` asks for a checkpoint that does not exist.
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume.strip().lower() in ("", "false")):
        return None
    if resume is True or (isinstance(resume, str) and resume.strip().lower() in ("true", "latest")):
        found = {p for pattern in saved for p in Path(pattern).parent.glob(Path(pattern).name) if p.is_file()}
        if not found:
            names = ", ".join(str(p) for p in saved)
            raise FileNotFoundError(f"resume was asked for, but there is no checkpoint of an earlier run ({names}).")
        return sorted(found, key=_saved_order)[-1]
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}.")
    return path


class TrainingCheckpoint:
    """Save a resumable training state every ``interval`` epochs, and resume from it when asked.

    Attach it to the trainer first in the handler list (so that it loads before other handlers start and, with
    ``final_path``, is the first handler of an exception). The save runs after every other handler of the epoch
    (validation, curves, LR step), so it captures the state the next epoch starts with.

    The head training saves ``last.pt`` after every epoch (replaced each time). The MAE pre-training saves every
    ``save_interval`` epochs to numbered files (``{epoch}`` in ``path``; a checkpoint of its large encoder and
    AdamW moments after each short epoch would cost more than the epoch), keeps the newest ``keep``, and writes
    ``final_path`` when training ends, also when an error or Ctrl-C stops it: a run of hours then loses nothing.
    Such a checkpoint is taken mid-epoch; resumed, the run finishes that epoch with other data than an
    uninterrupted run (exact continuation holds from the epoch-end checkpoints). The MAE's ``EpochSeed`` reseeds
    every epoch from ``(seed, epoch)`` after this handler restores the RNG states, so its epochs do not depend on
    where the run was resumed either.

    Args:
        path: the checkpoint file (e.g. ``models/last.pt``), replaced atomically at each save; with ``{epoch}`` in
            the name, one file per save (e.g. ``checkpoint_epoch={epoch}.pt``).
        objects: objects with ``state_dict``/``load_state_dict`` (network, optimizer, lr_scheduler, handlers).
        resume: False: start afresh; True: continue from the newest checkpoint this handler writes (``path``, its
            numbered files, ``final_path``); a path: continue from that file. Asking to resume when there is no
            checkpoint is an error (a mistyped output folder must not restart a long run from scratch).
        interval: epochs between saves (0: none, only ``final_path``).
        keep: numbered files kept (the newest; None: all); ignored without ``{epoch}`` in ``path``.
        final_path: also save here when training completes or stops on an exception (None: do not).
    """

    def __init__(
        self,
        path: str | Path,
        objects: Mapping[str, Any],
        resume: bool | str | Path | None = False,
        interval: int = 1,
        keep: int | None = None,
        final_path: str | Path | None = None,
    ) -> None:
        if int(interval) < 0:
            raise ValueError(f"interval must be >= 0 epochs (0: only final_path), got {interval}.")
        if keep is not None and int(keep) < 1:
            raise ValueError(f"keep must be >= 1 checkpoint (None: all), got {keep}.")
        self.path = str(path)
        self.objects = dict(objects)
        self.resume = resume
        self.interval = int(interval)
        self.keep = int(keep) if keep is not None else None
        self.final_path = Path(final_path) if final_path is not None else None
        self.rng = RngState()
        self.saved: list[Path] = []
        self._pending_rng: Mapping[str, Any] | None = None
        self._save_registered = False
        self._iteration_at_start: int | None = None

    def saved_patterns(self) -> list[str]:
        """The files this handler writes, as glob patterns (``{epoch}`` becomes ``*``)."""
        patterns = [self.path.replace("{epoch}", "*")]
        return patterns + ([str(self.final_path)] if self.final_path is not None else [])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_rng)
        if self.final_path is not None:
            engine.add_event_handler(Events.COMPLETED, self._save_final)
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._save_on_exception)

    def _on_started(self, engine: Engine) -> None:
        # Registered now, when every handler is attached, so the save runs after validation and the curves at the
        # end of each epoch and captures the RNG state the next epoch starts with.
        if not self._save_registered and self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._save_interval)
            self._save_registered = True
        self._iteration_at_start = None
        path = find_resume_checkpoint(self.resume, self.saved_patterns())
        if path is not None:
            self._load(engine, path)
        self._iteration_at_start = int(engine.state.iteration)

    def _save_interval(self, engine: Engine) -> None:
        path = Path(self.path.replace("{epoch}", str(engine.state.epoch)))
        self._save(engine, path)
        if "{epoch}" not in self.path or self.keep is None or not self._is_writer():
            return
        self.saved = [p for p in self.saved if p != path] + [path]
        while len(self.saved) > self.keep:
            self.saved.pop(0).unlink(missing_ok=True)

    def _save_final(self, engine: Engine) -> None:
        self._save(engine, self.final_path)

    def _save_on_exception(self, engine: Engine, error: BaseException) -> None:
        # only once this run has trained: a failed start (no checkpoint to resume) must not write one
        if self._iteration_at_start is not None and engine.state.iteration > self._iteration_at_start:
            self._save(engine, self.final_path, mid_epoch=True)
        raise error

    @staticmethod
    def _is_writer() -> bool:
        # Distributed runs: every rank holds the same state (DDP keeps the weights equal), rank 0 writes it,
        # and every rank loads it on resume.
        dist = torch.distributed
        return not (dist.is_available() and dist.is_initialized() and dist.get_rank())

    def _save(self, engine: Engine, path: Path, mid_epoch: bool = False) -> None:
        if not self._is_writer():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.objects.items()}
        # the epochs completed: one less than the counter when an exception stopped the run inside an epoch (the
        # trainer then resumes at iteration % epoch_length of that epoch)
        epoch, epoch_length = int(engine.state.epoch), engine.state.epoch_length
        if mid_epoch and epoch_length and engine.state.iteration % epoch_length:
            epoch -= 1
        state["trainer"] = {"epoch": epoch, "iteration": int(engine.state.iteration)}
        state["rng"] = self.rng.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(path, lambda h: h.write(buffer.getvalue()))

    def _load(self, engine: Engine, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else find_resume_checkpoint(self.resume, self.saved_patterns())
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure becomes one clear message
            raise ValueError(f"{path}: cannot resume from this checkpoint ({err}).") from err
        missing = [name for name in (*self.objects, "trainer", "rng") if name not in state]
        if missing:
            raise ValueError(f"{path}: not a resumable training checkpoint (missing {missing}).")
        for name, obj in self.objects.items():
            _unwrap(obj).load_state_dict(state[name])
        engine.state.epoch = int(state["trainer"]["epoch"])
        engine.state.iteration = int(state["trainer"]["iteration"])
        self._pending_rng = state["rng"]
        logger.info("Resumed from %s at epoch %d (iteration %d).", path, engine.state.epoch, engine.state.iteration)
        if engine.state.epoch >= engine.state.max_epochs:
            logger.info("The checkpointed run had already finished all %d epochs.", engine.state.max_epochs)

    def _restore_rng(self, engine: Engine) -> None:
        # Applied when the next epoch starts, not at load time: validation run before it (exec_at_start)
        # would otherwise draw from the restored generators.
        if self._pending_rng is not None:
            self.rng.load_state_dict(self._pending_rng)
            self._pending_rng = None
