"""Streaming slice-wise inference: a volume of any number of slices through the full ScSAM in bounded memory.

:func:`segment_slices` pulls 2D slices from a :class:`~scsam_monai.io.readers.Volume` or any iterable (a
generator, a memory-mapped array, a list), normalises each one as the model was trained (the model's
:class:`~scsam_monai.data.preprocessing.ImagePreprocessing`), runs the model on batches of slices, merges the
per-class logits into label maps (:func:`~scsam_monai.data.transforms.merge_class_logits`) and hands every label
map to a ``writer`` callback, in input order. Three stages overlap so that the model never waits for the disk:

- a **reader thread** reads and normalises batch k+1 (into pinned memory on a GPU) while the model runs batch k;
- the **model** runs in the calling thread; on a GPU the next batch is copied to the device on a side stream
  (``non_blocking``), and the label maps come back to pinned memory without stopping the device;
- a **writer thread** hands the label maps of batch k-1 to ``writer`` (disk writes, compression) meanwhile.

The queues between the stages are bounded (``prefetch`` and ``writeback`` batches), so at most
``batch_size * (prefetch + writeback + 3)`` slices are in flight between the last one read and the last one
written, whatever the number of slices: memory does not grow with the volume. An exception in either thread
stops the run and is raised in the caller's thread (a failed read of a :class:`Volume` names the file and the
slice); no further label map reaches ``writer`` after a failure.

Example::

    from scsam_monai.io.readers import open_volume
    from scsam_monai.engines.volume_inference import segment_slices

    with open_volume("volume.tif") as volume:
        segment_slices(model, volume, writer=lambda index, label: ...)

:class:`SliceWiseInferer` is the same slice-wise inference as a MONAI ``Inferer`` over a tensor in memory, for the
bundle's transform chain (``inference.yaml``'s ``inferer``, which MONAI Label's stock app runs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, nullcontext
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn
from tqdm.auto import tqdm

from scsam_monai.data.normalize import IntensityWindow, SliceNormalizer
from scsam_monai.data.preprocessing import ImagePreprocessing, as_2d_slice
from scsam_monai.data.transforms import merge_class_logits
from scsam_monai.engines.tiling import Tiling, segment_tiled
from scsam_monai.io.readers import DataPreparationError, Volume

__all__ = ["SliceWiseInferer", "segment_slices", "volume_slices"]

_DONE = object()
_POLL_S = 0.1


def volume_slices(volume: Volume, indices: Iterable[int] | None = None) -> Iterator[np.ndarray]:
    """The z slices of ``volume`` in order (or those of ``indices``); a failed read names the file and the slice."""
    depth = volume.shape[0]
    for index in range(depth) if indices is None else indices:
        try:
            yield volume.read_slice(index)
        except Exception as err:
            text = str(err)
            text = text[len(volume.source) + 2 :] if text.startswith(f"{volume.source}: ") else text
            raise DataPreparationError(f"{volume.source}: slice {index} (of {depth}) cannot be read: {text}") from err


def _batch(images: list[np.ndarray], normalizer: SliceNormalizer | None, pin: bool) -> torch.Tensor:
    """``(b, 1, H, W)`` float32 of the slices, normalised straight into the batch (pinned memory on a GPU)."""
    batch = torch.empty((len(images), 1, *images[0].shape), dtype=torch.float32, pin_memory=pin)
    target = batch.numpy()
    for i, image in enumerate(images):
        if normalizer is None:
            target[i, 0] = image
        else:
            normalizer(image, out=target[i, 0])
    return batch


def _raw_batch(images: list[np.ndarray]) -> list[np.ndarray]:
    """The slices as they were read (a tiled slice is normalised band by band, in its own dtype until then)."""
    return images


def _batches(
    slices: Iterable, batch_size: int, make_batch: Callable[[list[np.ndarray]], Any]
) -> Iterator[tuple[list[int], Any]]:
    """Consecutive batches ``(indices, make_batch(slices))``; a slice of another size starts a new batch."""
    pending: list[np.ndarray] = []
    first = 0
    for index, image in enumerate(slices):
        array = as_2d_slice(image)
        if pending and array.shape != pending[0].shape:
            yield list(range(first, first + len(pending))), make_batch(pending)
            pending, first = [], index
        pending.append(array)
        if len(pending) == batch_size:
            yield list(range(first, first + len(pending))), make_batch(pending)
            pending, first = [], index + 1
    if pending:
        yield list(range(first, first + len(pending))), make_batch(pending)


def _grouped_batches(
    volume: Volume, groups: Sequence[Sequence[int]], make_batch: Callable[[list[np.ndarray]], Any]
) -> Iterator[tuple[list[int], Any]]:
    """One batch per group of slice indices of ``volume`` (groups fixed by the caller, whatever reads them)."""
    for group in groups:
        indices = [int(i) for i in group]
        images = [as_2d_slice(image) for image in volume_slices(volume, indices)]
        yield indices, make_batch(images)


def _prefetched(batches: Iterator, depth: int) -> Iterator:
    """Run ``batches`` in a daemon thread, at most ``depth`` items ahead; its exceptions are raised here."""
    if depth <= 0:
        yield from batches
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped; whether it was queued."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer thread
            put(err)

    worker = threading.Thread(target=produce, name="segment_slices-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=60)


class _WriteBack:
    """Hands label maps to ``writer`` from a thread, in order, at most ``depth`` batches behind the model.

    Items are ``(slice indices, labels, probabilities or None, CUDA event or None)``; the event is waited for
    before the host copies are read. ``depth`` 0 writes in the caller's thread.
    """

    def __init__(self, writer: Callable[..., Any], depth: int, with_probabilities: bool) -> None:
        self.writer, self.with_probabilities = writer, with_probabilities
        self.written = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.queue: queue.Queue | None = queue.Queue(maxsize=depth) if depth > 0 else None
        self.thread: threading.Thread | None = None
        if self.queue is not None:
            self.thread = threading.Thread(target=self._run, name="segment_slices-writer", daemon=True)
            self.thread.start()

    def _write(self, item: tuple) -> None:
        indices, labels, probabilities, event = item
        if event is not None:
            event.synchronize()
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else labels
        if labels.dtype == np.int32:  # more than 255 classes
            labels = labels.astype(np.uint16)
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.numpy()
        for offset, (index, label) in enumerate(zip(indices, labels, strict=True)):
            if self.stop.is_set():
                return
            if self.with_probabilities:
                self.writer(index, label, probabilities[offset])
            else:
                self.writer(index, label)
            self.written += 1

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.queue.get(timeout=_POLL_S)  # type: ignore[union-attr]
                except queue.Empty:
                    continue
                if item is _DONE:
                    return
                self._write(item)
        except BaseException as err:  # noqa: BLE001 - raised in the caller's thread by put/finish
            self.error = err

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: Any) -> None:
        """Queue a batch (or write it now without a thread); raises the writer thread's error, if any."""
        if self.queue is None:
            if item is not _DONE:
                self._write(item)
            return
        while True:
            self._raise()
            try:
                self.queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> int:
        """Wait until every queued label map is written; the number written."""
        self.put(_DONE)
        if self.thread is not None:
            self.thread.join()
        self._raise()
        return self.written

    def cancel(self) -> None:
        """Stop writing (after a failure elsewhere): nothing more reaches ``writer``; waits for the thread."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_host(tensor: torch.Tensor, cuda: bool) -> torch.Tensor:
    """``tensor`` copied to (pinned) host memory without waiting for the device (record an event after it)."""
    if not cuda:
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def segment_slices(
    model: nn.Module,
    slices: Volume | Iterable[np.ndarray | torch.Tensor],
    *,
    writer: Callable[..., Any],
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    amp: bool = True,
    amp_dtype: torch.dtype | None = None,
    threshold: float = 0.5,
    normalize: bool = True,
    preprocessing: ImagePreprocessing | None = None,
    window: IntensityWindow | None = None,
    probabilities: bool = False,
    prefetch: int = 2,
    writeback: int = 2,
    progress: bool = True,
    total: int | None = None,
    tiling: Tiling | None = None,
    scale: float = 1.0,
    groups: Sequence[Sequence[int]] | None = None,
    progress_count: Callable[[], int] | None = None,
) -> int:
    """Segment 2D slices one batch at a time and hand each label map to ``writer``, in input order.

    Two ways to place a slice on the model's canvas:

    - ``tiling`` None: the model resizes each slice so that its longest side fills the canvas (models that
      record no pixel size, and MONAI's transform chain); slices of one size are batched.
    - ``tiling`` given: each slice is resampled by ``scale`` (input pixel size / model pixel size) and
      segmented at the model's pixel size: in one piece when it fits the canvas, else in Gaussian-blended tiles
      (:func:`~scsam_monai.engines.tiling.segment_tiled`, ``tiling.batch_size`` tiles per model call); the
      labels come back on the input's grid. The model must take ``fit_to_canvas=False`` (the bundle's ScSAM).

    Args:
        model: image-to-logits model, ``(B, 1, H, W)`` in [0, 1] -> ``(B, C, H, W)`` (a
            :class:`~scsam_monai.networks.scsam.ScSAM`); it is put in eval mode.
        slices: a :class:`~scsam_monai.io.readers.Volume` (its z slices; a failed read names the file and the
            slice), or 2D slices ``(H, W)`` (or ``(1, H, W)``) consumed lazily, once; a generator is never
            materialised.
        writer: called as ``writer(index, label)`` for every slice, index from 0, label ``(H, W)`` uint8 (uint16
            above 255 classes): 0 background, 1..C classes; ``writer(index, label, probabilities)`` with
            ``probabilities=True`` (``(C, H, W)`` float32 sigmoid probabilities). Runs in the writer thread.
        batch_size: slices per model call (consecutive slices of one size; a slice of another size starts a new
            batch, so the last batch of a run may be partial); None for 8 on a GPU and 1 on a CPU. With ``tiling``, each
            slice is its own batch and ``tiling.batch_size`` tiles go through the model at once.
        device: where the model runs; None for the device of the model's parameters.
        amp: autocast on CUDA (ignored on other devices).
        amp_dtype: autocast dtype; None for bfloat16 where the GPU supports it, else float16.
        threshold: sigmoid probability a class needs to win a pixel (see ``merge_class_logits``).
        normalize: normalise the slices as the model's preprocessing says; False when they are already in [0, 1].
        preprocessing: how the slices are normalised; None: the model's own
            (:meth:`~scsam_monai.data.preprocessing.ImagePreprocessing.of_model`, recorded with its weights).
        window: the input's intensity window (``prepared``: measured from ``slices`` when None, see
            :meth:`~scsam_monai.data.preprocessing.ImagePreprocessing.window`).
        probabilities: also pass each slice's per-class sigmoid probabilities to ``writer``.
        prefetch: batches read and normalised ahead in the reader thread (0: none, all in this thread).
        writeback: batches of label maps queued for the writer thread (0: ``writer`` runs in this thread).
        progress: show a progress bar.
        total: number of slices for the progress bar (taken from ``len(slices)`` when it has one).
        tiling: segment at the model's pixel size in tiles (see above); None: resize onto the canvas.
        scale: input pixel size / model pixel size (with ``tiling``).
        groups: with a :class:`Volume`: the slice indices to segment, one model batch per group, in this order
            (a distributed run's share, fixed whatever the number of ranks); ``writer`` gets the volume's indices.
        progress_count: called after every batch for the number of slices done so far (all ranks of a
            distributed run, counted in the output); None: this call's own count.

    Returns:
        The number of slices segmented.

    Raises:
        ValueError: bad ``batch_size``, a slice that is not 2D.
        DataPreparationError: a slice of a :class:`Volume` cannot be read (file and slice named).
        Exception: whatever ``writer`` or the model raised.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    if batch_size is None:
        batch_size = 8 if device.type == "cuda" else 1
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    normalizer = None
    if normalize:
        preprocessing = preprocessing or ImagePreprocessing.of_model(model)
        normalizer = preprocessing.normalizer(preprocessing.window(slices, window))
    cuda = device.type == "cuda"
    # tiled slices stay in their own dtype and are normalised band by band as the tiles read them, to the same
    # values (SliceNormalizer.for_bands): a 16,384² uint8 slice is 256 MiB, in float32 1 GiB
    if tiling is not None and normalizer is not None:
        make_batch: Callable[[list[np.ndarray]], Any] = _raw_batch
    else:
        make_batch = partial(_batch, normalizer=normalizer, pin=cuda)
    if groups is not None:
        if not isinstance(slices, Volume):
            raise ValueError("groups= needs a Volume (its slices are read by index).")
        total = sum(len(g) for g in groups) if total is None else total
        produced = _grouped_batches(slices, groups, make_batch)
    else:
        if isinstance(slices, Volume):
            total = slices.shape[0] if total is None else total
            slices = volume_slices(slices)
        elif total is None and hasattr(slices, "__len__"):
            total = len(slices)  # type: ignore[arg-type]
        # tiled: one slice per batch (its tiles are batched), so at most a few whole slices are in flight
        produced = _batches(slices, 1 if tiling is not None else batch_size, make_batch)
    model.eval()
    use_amp = amp and cuda
    if use_amp and amp_dtype is None:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if use_amp else nullcontext()
    compute = torch.cuda.current_stream(device) if cuda else None
    copies = torch.cuda.Stream(device) if cuda else None
    output = _WriteBack(writer, writeback, probabilities)
    try:
        reader = closing(_prefetched(produced, min(prefetch, 1) if tiling is not None else prefetch))
        with tqdm(total=total, desc="Segmenting slices", unit="slice", disable=not progress) as bar, reader as batches:
            for indices, batch in batches:
                if tiling is not None:
                    labels, probs = _segment_tiled_batch(
                        model, batch, tiling, scale, device, autocast, threshold, probabilities, normalizer
                    )
                    output.put((indices, labels, probs, None))
                    _advance(bar, len(indices), progress_count)
                    continue
                if cuda:
                    with torch.cuda.stream(copies):
                        images = batch.to(device, non_blocking=True)
                    compute.wait_stream(copies)
                    images.record_stream(compute)
                else:
                    images = batch
                with torch.inference_mode(), autocast:
                    logits = model(images)
                    classes = logits[:, 1:].float()  # channel 0 is the model's background (threshold 0.5)
                    merged = merge_class_logits(classes, threshold)[:, 0]
                    many = classes.shape[1] >= 256
                    labels = _to_host(merged.to(torch.int32 if many else torch.uint8), cuda)
                    probs = _to_host(torch.sigmoid(classes), cuda) if probabilities else None
                event = None
                if cuda:
                    event = torch.cuda.Event()
                    event.record(compute)
                del images, logits, merged, batch
                output.put((indices, labels, probs, event))
                _advance(bar, len(indices), progress_count)
            return output.finish()
    except BaseException:
        output.cancel()
        raise


def _advance(bar: tqdm, done: int, progress_count: Callable[[], int] | None) -> None:
    """Move the progress bar by ``done`` slices, or to what ``progress_count`` counts (all ranks)."""
    if progress_count is None:
        bar.update(done)
        return
    bar.update(max(0, min(bar.total or 0, progress_count()) - bar.n))


def _segment_tiled_batch(
    model: nn.Module,
    batch: torch.Tensor,
    tiling: Tiling,
    scale: float,
    device: torch.device,
    autocast: Any,
    threshold: float,
    probabilities: bool,
    normalize: SliceNormalizer | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels ``(b, H, W)`` (and probabilities ``(b, C, H, W)``) of a batch of slices, each at the model's pixel
    size, tiled when it does not fit the canvas. ``batch``: ``(b, 1, H, W)`` normalised, or the raw slices,
    which ``normalize`` then normalises band by band."""

    def at_own_pixel_size(images: torch.Tensor) -> torch.Tensor:
        return model(images, fit_to_canvas=False)

    labels, probs = [], []
    for image in batch if normalize is not None else batch[:, 0]:
        label, prob = segment_tiled(
            at_own_pixel_size,
            image,
            tiling=tiling,
            scale=scale,
            device=device,
            autocast=autocast,
            threshold=threshold,
            probabilities=probabilities,
            normalize=None if normalize is None else normalize.for_bands(image),
        )
        labels.append(label)
        probs.append(prob)
    if len(labels) == 1:  # no copy of a large slice's maps
        return labels[0][None], (probs[0][None] if probabilities else None)
    return np.stack(labels), (np.stack(probs) if probabilities else None)


class SliceWiseInferer(Inferer):
    """Run a 2D network on ``(B, C, H, W)`` inputs, or slice by slice (along the last axis) on ``(B, C, H, W, D)``.

    Args:
        batch_size: slices per network call for 3D inputs.
    """

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.batch_size = batch_size

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits of the same spatial shape as ``inputs``."""
        if inputs.ndim == 4:
            return network(inputs, *args, **kwargs)
        if inputs.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, D) inputs, got {tuple(inputs.shape)}.")
        b, c, h, w, depth = inputs.shape
        slices = inputs.permute(0, 4, 1, 2, 3).reshape(b * depth, c, h, w)
        outputs = [
            network(slices[i : i + self.batch_size], *args, **kwargs) for i in range(0, len(slices), self.batch_size)
        ]
        logits = torch.cat(outputs)
        return logits.reshape(b, depth, -1, h, w).permute(0, 2, 3, 4, 1)
