"""The processes that segment one dataset together: ``torchrun`` ranks sharing a volume's slices.

The same inference command runs under ``torchrun --nproc_per_node N -m monai.bundle run inference ...``: every
rank joins a ``torch.distributed`` group (NCCL on GPUs, gloo on CPUs, as training does), takes its share of the
volume's slice groups and writes its own chunks of one OME-Zarr store. :func:`slice_groups` fixes the groups (one
model batch each) from the volume alone, and :meth:`Ranks.share` deals them out round-robin, so that the number of
ranks cannot change what any model call sees: one rank and two ranks write the same labels, bit for bit.

Nothing here schedules work dynamically: the shares are static, like a ``DistributedSampler``'s, and the store's
completion markers (not the ranks) decide what a rerun still has to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from scsam_monai.atomic import atomic_write_text
from scsam_monai.engines.distributed import DistributedError, destroy_distributed, distributed_device, init_distributed

__all__ = ["RankFailure", "Ranks", "slice_groups", "weights_digest"]

logger = logging.getLogger(__name__)


def slice_groups(indices: Sequence[int] | int, batch_size: int) -> list[list[int]]:
    """Consecutive groups of at most ``batch_size`` slice indices: one model batch each, whatever the ranks.

    Args:
        indices: the slice indices (or their number: ``range(n)``).
        batch_size: slices per group.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    items = list(range(indices)) if isinstance(indices, int) else [int(i) for i in indices]
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and buffer of ``model``, encoders included: a rerun with
    other weights must not resume into an output made with these."""
    digest = hashlib.sha256()
    named = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run.

    Args:
        rank: this process's rank (0 alone).
        world: number of ranks (1 alone).
        joined: whether this object joined the process group (and so leaves it in :meth:`leave`).
    """

    rank: int = 0
    world: int = 1
    joined: bool = False

    @classmethod
    def join(cls) -> Ranks:
        """Join the process group when ``torchrun`` started several ranks; a single rank otherwise."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), False)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        init_distributed()
        return cls(dist.get_rank(), dist.get_world_size(), True)

    @property
    def main(self) -> bool:
        """Rank 0: the one that shows progress and writes the run's summary."""
        return self.rank == 0

    def device(self, configured: torch.device | str | None) -> torch.device | None:
        """The device this rank segments on: its own GPU (``LOCAL_RANK``) in a multi-GPU run, else ``configured``."""
        if self.world > 1 and torch.cuda.is_available():
            return distributed_device()
        return None if configured is None else torch.device(configured)

    def share(self, groups: Sequence[Sequence[int]]) -> list[list[int]]:
        """This rank's groups: every ``world``-th, starting at ``rank``."""
        return [list(g) for g in groups[self.rank :: self.world]]

    def barrier(self) -> None:
        """Wait for every rank (nothing alone)."""
        if self.world > 1:
            dist.barrier()

    def leave(self) -> None:
        """Leave the process group if :meth:`join` joined it."""
        if self.joined:
            destroy_distributed()


class RankFailure:
    """A flag in the output store that stops every rank when one fails, with the failing rank's message.

    A failing rank writes its error (:meth:`record`) to ``failed-rank<r>`` under the store's ``.scsam`` folder;
    the others :meth:`check` it before every slice they write and stop, naming the rank and its message. Rank 0
    clears old flags when a run starts.

    Args:
        store: the output store (its ``.scsam`` folder holds the flags).
        ranks: this process's ranks.
    """

    def __init__(self, store: str | Path, ranks: Ranks) -> None:
        self.folder = Path(store) / ".scsam"
        self.ranks = ranks

    def clear(self) -> None:
        """Remove the flags of an earlier run (rank 0, before the others start)."""
        if self.folder.is_dir():
            for flag in self.folder.glob("failed-rank*"):
                flag.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise when another rank has failed."""
        if self.ranks.world <= 1 or not self.folder.is_dir():
            return
        for flag in sorted(self.folder.glob("failed-rank*")):
            if flag.name != f"failed-rank{self.ranks.rank}":
                message = flag.read_text(errors="replace").strip()
                raise DistributedError(f"stopped: {flag.name.removeprefix('failed-')} failed: {message}")

    def record(self, error: BaseException) -> None:
        """Tell the other ranks that this one failed with ``error`` (a stop caused by another rank is not told)."""
        if self.ranks.world <= 1 or (isinstance(error, DistributedError) and str(error).startswith("stopped:")):
            return
        try:
            atomic_write_text(self.folder / f"failed-rank{self.ranks.rank}", f"{type(error).__name__}: {error}")
        except OSError as err:  # the original error matters more than the flag
            logger.warning("could not flag this rank's failure for the others (%s)", err)
