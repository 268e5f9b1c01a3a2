"""Streaming slice-wise inference: a volume of any number of slices through the full ScSAM in bounded memory.

:func:`segment_slices` pulls 2D slices from any iterable (a generator reading a TIFF stack page by page, a
memory-mapped array, a list), normalises each one like the bundle's inference preprocessing (intensities scaled
to [0, 1] between the 0.5th and 99.5th percentiles, clipped), runs the model on batches of slices, merges the
per-class logits into label maps (:func:`~scsam_monai.data.transforms.merge_class_logits`) and hands every label
map to a ``writer`` callback, in input order. Neither the inputs nor the outputs are accumulated: at most
``batch_size * (prefetch + 2)`` slices are read ahead of the last one written, so memory does not grow with the
number of slices.
A background thread reads and normalises the next batches while the model runs on the current one.

Example::

    import tifffile
    from scsam_monai.engines.volume_inference import segment_slices

    with tifffile.TiffFile("volume.tif") as tif, tifffile.TiffWriter("volume_seg.tif") as out:
        segment_slices(
            model,
            (page.asarray() for page in tif.pages),
            batch_size=8,
            writer=lambda index, label: out.write(label, contiguous=True),
        )
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from monai.transforms import ScaleIntensityRangePercentiles
from torch import nn
from tqdm.auto import tqdm

from ..data.transforms import merge_class_logits

__all__ = ["normalize_slice", "segment_slices"]

_NORMALIZE = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
_DONE = object()


def normalize_slice(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One slice as the bundle's inference preprocessing gives it to the model: ``(1, H, W)`` float32 in [0, 1].

    Intensities are scaled between the slice's 0.5th and 99.5th percentiles and clipped (MONAI's
    ``ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True)``, as in
    ``bundle/configs/inference.yaml``).

    Args:
        image: a 2D slice ``(H, W)`` or ``(1, H, W)`` of any real dtype.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"Expected a 2D slice (H, W) or (1, H, W), got shape {tuple(x.shape)}.")
    x = _NORMALIZE(x.to(torch.float32)[None])
    return torch.as_tensor(x, dtype=torch.float32).contiguous()


def _batches(slices: Iterable, batch_size: int, normalize: bool) -> Iterator[tuple[int, torch.Tensor]]:
    """Consecutive batches ``(first index, (b, 1, H, W))``; a slice of another size starts a new batch."""
    pending: list[torch.Tensor] = []
    first = 0
    for index, image in enumerate(slices):
        x = normalize_slice(image) if normalize else torch.as_tensor(np.asarray(image), dtype=torch.float32)
        if x.ndim == 2:
            x = x[None]
        if pending and x.shape != pending[0].shape:
            yield first, torch.stack(pending)
            pending, first = [], index
        pending.append(x)
        if len(pending) == batch_size:
            yield first, torch.stack(pending)
            pending, first = [], index + 1
    if pending:
        yield first, torch.stack(pending)


def _prefetched(batches: Iterator, depth: int) -> Iterator:
    """Run ``batches`` in a daemon thread, at most ``depth`` items ahead; its exceptions are raised here."""
    if depth <= 0:
        yield from batches
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer thread
            buffer.put(err)

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
        worker.join(timeout=5)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def segment_slices(
    model: nn.Module,
    slices: Iterable[np.ndarray | torch.Tensor],
    *,
    writer: Callable[[int, np.ndarray], Any],
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    amp: bool = True,
    amp_dtype: torch.dtype | None = None,
    threshold: float = 0.5,
    normalize: bool = True,
    prefetch: int = 1,
    progress: bool = True,
    total: int | None = None,
) -> int:
    """Segment 2D slices one batch at a time and hand each label map to ``writer``, in input order.

    Args:
        model: image-to-logits model, ``(B, 1, H, W)`` in [0, 1] -> ``(B, C, H, W)`` (a
            :class:`~scsam_monai.networks.scsam.ScSAM`); it is put in eval mode.
        slices: 2D slices ``(H, W)`` (or ``(1, H, W)``), consumed lazily, once; a generator is never materialised.
        writer: called as ``writer(index, label)`` for every slice, index from 0, label ``(H, W)`` uint8 (uint16
            above 255 classes): 0 background, 1..C classes.
        batch_size: slices per model call (consecutive slices of one size; a slice of another size starts a new
            batch, so the last batch of a run may be partial); None for 8 on a GPU and 1 on a CPU (where bigger
            batches are slower per slice, see ``docs/performance.md``).
        device: where the model runs; None for the device of the model's parameters.
        amp: autocast on CUDA (ignored on other devices).
        amp_dtype: autocast dtype; None for bfloat16 where the GPU supports it, else float16.
        threshold: sigmoid probability a class needs to win a pixel (see ``merge_class_logits``).
        normalize: scale each slice to [0, 1] by its 0.5/99.5 percentiles (:func:`normalize_slice`); False when
            the slices are already in [0, 1].
        prefetch: batches read and normalised ahead in a background thread (0: none, all in this thread).
        progress: show a progress bar.
        total: number of slices for the progress bar (taken from ``len(slices)`` when it has one).

    Returns:
        The number of slices segmented.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    if batch_size is None:
        batch_size = 8 if device.type == "cuda" else 1
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    model.eval()
    use_amp = amp and device.type == "cuda"
    if use_amp and amp_dtype is None:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if use_amp else nullcontext()
    if total is None and hasattr(slices, "__len__"):
        total = len(slices)  # type: ignore[arg-type]
    pin = device.type == "cuda"
    done = 0
    with tqdm(total=total, desc="Segmenting slices", unit="slice", disable=not progress) as bar:
        for first, batch in _prefetched(_batches(slices, batch_size, normalize), prefetch):
            if pin:
                batch = batch.pin_memory()
            images = batch.to(device, non_blocking=pin)
            with torch.inference_mode(), autocast:
                logits = model(images)
            labels = merge_class_logits(logits.float(), threshold)[:, 0]
            dtype = np.uint8 if logits.shape[1] < 256 else np.uint16
            labels = labels.to(torch.uint8 if dtype is np.uint8 else torch.int32).cpu().numpy().astype(dtype)
            del images, logits, batch
            for offset, label in enumerate(labels):
                writer(first + offset, label)
            done += len(labels)
            bar.update(len(labels))
    return done
