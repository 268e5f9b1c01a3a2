"""TIFF stacks through tifffile's incremental writer: an ImageJ hyperstack with the input's spacing."""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from scsam_monai.io.writers.base import SliceWriter, spacing_zyx

__all__ = ["TiffStackWriter"]

_ABORT = object()


class _Aborted(Exception):
    """Raised inside tifffile's page iterator to stop an aborted stack."""


class TiffStackWriter(SliceWriter):
    """tifffile writes an ImageJ stack from an iterator of pages (with the stack's shape given up front); the pages
    reach it through a small queue, from a writer thread, so only a few slices are held at a time. Arguments as
    :class:`~.base.SliceWriter`."""

    def __init__(self, *args: Any) -> None:
        import tifffile

        super().__init__(*args)
        z, y, x = spacing_zyx(self.volume)
        unit = self.volume.unit or "pixel"
        unit = "micron" if unit in ("µm", "μm", "um") else unit.encode("ascii", "replace").decode()
        imagej = self.dtype in (np.uint8, np.uint16, np.float32)
        kwargs: dict[str, Any] = {"shape": self.shape, "dtype": self.dtype, "resolution": (1.0 / x, 1.0 / y)}
        kwargs["metadata"] = {"axes": "ZYX", "spacing": z, "unit": unit} if imagej else None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None

        def pages():
            for _ in range(self.shape[0]):
                page = self._queue.get()
                if page is _ABORT:
                    raise _Aborted
                yield page

        def run() -> None:
            try:
                with tifffile.TiffWriter(self.partial, imagej=imagej) as tif:
                    tif.write(pages(), **kwargs)
            except _Aborted:
                pass
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread by write/close
                self._error = err

        self._thread = threading.Thread(target=run, name=f"tiff-writer-{self.path.name}", daemon=True)
        self._thread.start()

    def _failed(self) -> RuntimeError:
        return RuntimeError(f"{self.path}: writing the TIFF stack failed: {self._error}")

    def _put(self, item: Any) -> None:
        while self._error is None and self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        if self._error is not None:
            raise self._failed() from self._error

    def _write(self, index: int, plane: np.ndarray) -> None:
        self._put(np.ascontiguousarray(plane, dtype=self.dtype))

    def _finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._failed() from self._error

    def _discard(self) -> None:
        if self._thread.is_alive():
            self._put(_ABORT)
        self._thread.join()
