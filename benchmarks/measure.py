"""Measuring tools of the benchmark: interleaved repeated timing, FLOP counts, matmul throughput, peak memory."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "synchronizer",
    "autocast_context",
    "time_interleaved",
    "summarize",
    "count_flops",
    "matmul_throughput",
    "peak_rss_bytes",
]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (CUDA), or does nothing (CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``amp_dtype`` on ``device``, or nothing when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def time_interleaved(
    functions: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each function, called in turn (round robin).

    Interleaving puts every function under the same machine load: a busy neighbour slows all of them alike,
    so their ratios stay meaningful on a shared machine. The order rotates by one each round, so that no function
    always follows the same one (a function called after one that freed a lot of memory pays page faults).

    Args:
        functions: name -> function of no argument.
        warmup: untimed rounds first (allocations, autotuning, lazy initialisation).
        repeats: timed rounds.
        sync: called before and after each timed call (``torch.cuda.synchronize`` on a GPU).

    Returns:
        name -> list of ``repeats`` durations in seconds.
    """
    for _ in range(warmup):
        for fn in functions.values():
            fn()
        sync()
    gc.collect()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for round_ in range(repeats):
        shift = round_ % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            fn = functions[name]
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return samples


def summarize(samples: list[float], per: float = 1.0) -> dict:
    """Median and spread of durations divided by ``per`` (e.g. seconds per image of a batch of ``per``).

    Returns:
        ``median``, ``min``, ``max``, ``iqr`` (interquartile range; 0 for fewer than 2 samples),
        ``rel_spread`` ((max - min) / median), ``n`` and the ``samples`` themselves, in seconds.
    """
    values = [s / per for s in samples]
    median = statistics.median(values)
    iqr = 0.0
    if len(values) >= 2:
        q = statistics.quantiles(values, n=4, method="inclusive")
        iqr = q[2] - q[0]
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "iqr": iqr,
        "rel_spread": (max(values) - min(values)) / median if median > 0 else 0.0,
        "n": len(values),
        "samples": values,
    }


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """FLOPs of one call of ``fn`` (``torch.utils.flop_counter``: matmuls, convolutions, attention; 2 per MAC).

    Returns:
        ``(flops, the call's result)``; the call doubles as a warm-up.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return int(counter.get_total_flops()), out


def matmul_throughput(
    device: torch.device, dtype: torch.dtype, size: int, *, repeats: int = 3, sync: Callable[[], None] | None = None
) -> dict:
    """FLOP/s of a ``size`` x ``size`` matmul on ``device`` in ``dtype`` (median of ``repeats`` after a warm-up).

    Returns:
        ``flops_per_s`` (median), ``size``, ``dtype``, ``seconds`` (summary of the timed calls).
    """
    sync = sync or synchronizer(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    samples = time_interleaved({"mm": lambda: torch.mm(a, b)}, warmup=1, repeats=repeats, sync=sync)["mm"]
    seconds = summarize(samples)
    return {
        "flops_per_s": 2.0 * size**3 / seconds["median"],
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "seconds": seconds,
    }


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far (``getrusage`` high-water mark), or None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil  # optional

            return int(psutil.Process().memory_info().peak_wset)
        except Exception:  # noqa: BLE001
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
