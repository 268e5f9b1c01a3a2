"""The served network's warm-up at server start, and what ``/info`` and the first answer say about it.

On a CPU the bundle's SAM encoder is compiled (``torch.compile``, ``sam_compile: auto``) at its first call: about
1.5 minutes for ViT-B (less when Inductor's on-disk cache holds the graph from an earlier run). Without a warm-up
the first ``/infer`` request pays for it. :class:`Warmup` runs that
first call in a background thread as soon as the server is up (MONAI Label's ``on_init_complete``), holding the
inference task's lock: the server answers ``/info`` at once, and a request that arrives meanwhile waits only for
what is left of the warm-up, then reports how long it waited. Nothing here imports MONAI Label.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Warmup", "WARMUP_STATES"]

logger = logging.getLogger(__name__)

WARMUP_STATES = ("off", "pending", "running", "done", "failed")
"""``off``: not asked for; ``pending``: asked for, the server has not started it yet; ``running``; ``done``;
``failed`` (the error is reported; requests still run, and pay for what the warm-up did not do)."""


class Warmup:
    """One background warm-up run: its state, its duration, its outcome.

    Args:
        enabled: whether a warm-up will be started (state ``pending``), else ``off``.
        name: what is warmed, for the log.
    """

    def __init__(self, enabled: bool = True, name: str = "the network") -> None:
        self.name = name
        self.state = "pending" if enabled else "off"
        self.started: float | None = None
        self.finished: float | None = None
        self.error: str | None = None
        self.details: dict[str, Any] = {}
        self.thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether a request arriving now waits for the warm-up (``pending`` or ``running``)."""
        return self.state in ("pending", "running")

    def start(self, work: Callable[[], Mapping[str, Any] | None], lock: threading.Lock) -> threading.Thread | None:
        """Run ``work`` in a daemon thread while holding ``lock`` (taken here, before this returns).

        Taking the lock in the caller's thread makes the warm-up the first user of whatever ``lock`` guards: a
        request cannot slip in between and pay for the compilation itself.

        Args:
            work: the warm-up; what it returns is reported with the state (``/info``).
            lock: the lock requests hold while they use the network.

        Returns:
            The thread, or None when the warm-up is off or was started already.
        """
        if self.state != "pending":
            return None
        lock.acquire()
        self.state, self.started = "running", time.time()
        logger.info(f"Warm-up of {self.name} started in the background; requests wait for it.")

        def run() -> None:
            try:
                self.details = dict(work() or {})
                self.state = "done"
            except Exception as err:  # noqa: BLE001 - reported in /info; requests run without the warm-up
                self.error = f"{type(err).__name__}: {err}"
                self.state = "failed"
            finally:
                self.finished = time.time()
                lock.release()
            if self.state == "done":
                logger.info(f"Warm-up of {self.name} done in {self.seconds:.1f} s: {self.details}")
            else:
                logger.warning(f"Warm-up of {self.name} failed after {self.seconds:.1f} s: {self.error}")

        self.thread = threading.Thread(target=run, name="scsam-warmup", daemon=True)
        self.thread.start()
        return self.thread

    @property
    def seconds(self) -> float | None:
        """Duration of the warm-up (so far, while it runs); None before it starts."""
        if self.started is None:
            return None
        return round((self.finished or time.time()) - self.started, 2)

    def info(self) -> dict[str, Any]:
        """The state for ``/info``: ``state``, and once started ``seconds``, then its details or ``error``."""
        info: dict[str, Any] = {"state": self.state}
        if self.started is not None:
            info["seconds"] = self.seconds
        info.update(self.details)
        if self.error:
            info["error"] = self.error
        return info

    def report(self, waited: float) -> dict[str, Any]:
        """What a request that arrived during the warm-up is told: :meth:`info` and the seconds it waited."""
        return {**self.info(), "waited_s": round(waited, 2)}
