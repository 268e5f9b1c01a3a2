"""Multi-GPU (DDP) training pieces for ``bundle/configs/multi_gpu_train.yaml``, launched by ``torchrun``.

MONAI's bundles do distributed training with plain ``torch.distributed``: every rank builds the same
workflow, the trainer's network is wrapped in ``DistributedDataParallel``, ``DistributedSampler`` splits the
data, and only rank 0 writes files. What ScSAM adds, and what lives here:

- the frozen encoders' embedding cache is filled by all ranks together (each rank embeds its share of the
  images, then the ranks exchange their records), so the costly encoder pass scales with the GPUs too;
- an error on one rank (a corrupt image, say) stops every rank with that message, instead of leaving the
  others waiting forever at the next collective call;
- a check after every epoch that all ranks hold the same weights, which is what DDP promises and what a
  mis-wired overlay (a rank training without the wrapper, say) silently breaks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from tqdm._monitor import TMonitor

from scsam_monai.data.embedding_dataset import precompute_embeddings

__all__ = [
    "DistributedError",
    "WeightConsistencyCheck",
    "destroy_distributed",
    "distributed_device",
    "init_distributed",
    "is_distributed",
    "rank",
    "sharded_precompute_embeddings",
    "world_size",
]

logger = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """A distributed run cannot go on; the message names the rank and the problem."""


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a distributed run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 outside a distributed run)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU (gloo runs, tests)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> int:
    """Join the process group that ``torchrun`` describes in the environment; return the world size.

    Args:
        backend: ``nccl`` (GPUs) or ``gloo`` (CPU); None picks ``nccl`` when CUDA is available, else ``gloo``.

    Raises:
        DistributedError: the process was not started by ``torchrun`` (no ``RANK``/``WORLD_SIZE``/
            ``MASTER_ADDR`` in the environment), or the backend cannot run here.
    """
    if dist.is_initialized():
        return dist.get_world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(
            f"multi_gpu_train.yaml needs torchrun (environment variables {', '.join(missing)} are not set): "
            "torchrun --nproc_per_node N -m monai.bundle run training --config_file \"['bundle/configs/train.yaml',"
            "'bundle/configs/multi_gpu_train.yaml']\" ..."
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError("ddp_backend nccl needs CUDA GPUs; use --ddp_backend gloo on CPUs.")
    if torch.cuda.is_available():
        torch.cuda.set_device(distributed_device())
    dist.init_process_group(backend=backend)
    logger.info("Rank %d of %d joined the %s process group.", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_world_size()


def destroy_distributed() -> None:
    """Leave the process group at the end of a run (the bundle's ``finalize``): all ranks together, exactly once.

    Why the barrier: ``DistributedDataParallel`` keeps the gloo backend, and so its worker threads, alive after
    ``destroy_process_group``. A gloo worker frees the work of a collective after the caller has moved on; for
    ``all_gather_object`` (the weight check's) that drops the last reference to Python tensors and takes the GIL.
    Rank 1, with nothing left to write, used to reach interpreter shutdown before its worker had done so: the
    worker's GIL request during ``Py_Finalize`` ends the thread (``pthread_exit``) inside a C++ destructor,
    ``terminate called without an active exception`` (SIGABRT, seen in a core dump), and ``torchrun`` killed
    rank 0, still writing its final checkpoints. Now every rank waits at a barrier until all ranks have finished
    (rank 0's files included), with the GIL released, so the workers free their last works while the interpreter
    is alive; the tqdm monitor thread is stopped and joined; then the group is destroyed.
    A second call, or a call outside a distributed run, does nothing.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    _stop_progress_monitor()
    dist.destroy_process_group()
    logger.debug("Left the process group.")


def _stop_progress_monitor() -> None:
    """Stop and join tqdm's monitor thread (a daemon thread the embedding precompute's progress bar starts)."""
    for thread in threading.enumerate():
        if isinstance(thread, TMonitor) and thread is not threading.current_thread():
            thread.exit()


def _raise_if_any_rank_failed(error: BaseException | None) -> None:
    """Collective: every rank learns whether any rank failed; all raise the first failure's message."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        text = "\n".join(f"  rank {r}: {m}" for r, m in failed)
        if error is not None:
            raise DistributedError(f"embedding precompute failed on {len(failed)} rank(s):\n{text}") from error
        raise DistributedError(f"embedding precompute failed on {len(failed)} other rank(s):\n{text}")


def sharded_precompute_embeddings(
    datalist: Sequence[Mapping[str, str]], precompute: Callable[..., list[dict]] = precompute_embeddings, **kwargs: Any
) -> list[dict]:
    """``precompute_embeddings`` with the encoder work split over the ranks of a distributed run.

    Rank ``r`` embeds items ``r, r + W, r + 2W, ...`` into the cache; the ranks then exchange their records
    (small dicts of cache paths and sizes), so every rank returns the records of the whole datalist, in its
    order, without reading any image a second time. Outside a distributed run this is
    ``precompute(datalist, **kwargs)``. The cache folder must be shared by the ranks (one machine, or a shared
    file system): training reads every rank's entries.

    Args:
        datalist: the split's items.
        precompute: the function that fills the cache and returns the same number of records (views) for
            every item, in order (``precompute_embeddings``).
        kwargs: its other arguments.
    """
    if not is_distributed():
        return precompute(datalist, **kwargs)
    items = list(datalist)
    r, w = dist.get_rank(), dist.get_world_size()
    share = items[r::w]
    records: list[dict] = []
    error: BaseException | None = None
    if share:
        try:
            records = precompute(share, **{**kwargs, "progress": kwargs.get("progress", True) and r == 0})
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below, with the rank named
            error = err
    _raise_if_any_rank_failed(error)
    shares: list[list[dict] | None] = [None] * w
    dist.all_gather_object(shares, records)
    # item i is item i // W of rank i % W's share, which gave len(records) / len(share) records per item
    views = [len(shares[k]) // max(1, len(items[k::w])) for k in range(w)]
    ordered: list[dict] = []
    for i in range(len(items)):
        k, j = i % w, i // w
        ordered.extend(shares[k][j * views[k] : (j + 1) * views[k]])
    return ordered


def parameter_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's trainable parameters (names, shapes and exact values), for comparing ranks."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class WeightConsistencyCheck:
    """After every epoch, check that all ranks hold the same trainable weights; stop the run if not.

    Also logs, on every rank, how many iterations it ran in the epoch (each rank's log shows that it trained).

    Args:
        network: the trained module (the DDP wrapper or the module inside it).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        module = getattr(self.network, "module", self.network)
        fingerprint = parameter_fingerprint(module)
        logger.info(
            "Rank %d of %d: epoch %d done, %d iterations in it, weights %s.",
            rank(),
            world_size(),
            engine.state.epoch,
            engine.state.epoch_length,
            fingerprint[:12],
        )
        if not is_distributed():
            return
        fingerprints: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(fingerprints, fingerprint)
        if len(set(fingerprints)) != 1:
            listing = ", ".join(f"rank {r}: {f[:12]}" for r, f in enumerate(fingerprints))
            raise DistributedError(f"epoch {engine.state.epoch}: the ranks' weights differ ({listing}).")
        if dist.get_rank() == 0:
            logger.info("All %d ranks hold the same weights after epoch %d.", len(fingerprints), engine.state.epoch)
