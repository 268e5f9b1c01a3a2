"""Volume inference memory: peak RSS (and GPU memory) after N and after 10 N slices of streaming inference.

Each measurement runs in a fresh Python process (``python -m benchmarks.memory ...``), so the peak
resident set size (``getrusage``'s high-water mark) belongs to volume inference alone. The process builds the
model, segments one warm-up batch, then streams 10 N generated slices through
:func:`~scsam_monai.engines.volume_inference.segment_slices` with a writer that only checks each label map, and
records the peaks when slice N and slice 10 N are written. Flat memory means equal peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch

from benchmarks.measure import peak_rss_bytes
from benchmarks.models import build_model
from scsam_monai.engines.volume_inference import segment_slices

__all__ = ["measure_volume_memory", "run_streaming_child", "main"]


def _slices(n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` EM-like 16-bit slices made on demand (never held together)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.normal(2000, 300, (size, size)).clip(0, 65535).astype(np.uint16)


def _worker(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = None if args.amp == "none" else getattr(torch, args.amp)
    model = build_model(
        args.sam_arch,
        args.mae_arch,
        sam_checkpoint=args.sam_checkpoint,
        mae_checkpoint=args.mae_checkpoint,
        device=device,
        sam_precision=args.sam_precision,
        sam_attention=args.sam_attention,
    )
    options = {"batch_size": args.batch_size, "device": device, "amp": amp_dtype is not None, "progress": False}
    if amp_dtype is not None:
        options["amp_dtype"] = amp_dtype
    segment_slices(model, _slices(args.batch_size, args.image_size, 1), writer=lambda i, lab: None, **options)
    baseline = peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    marks = sorted({args.slices, args.slices * args.factor})
    checkpoints: list[dict] = []
    checksum = 0

    def writer(index: int, label: np.ndarray) -> None:
        nonlocal checksum
        checksum += int(label.max())  # touch the label map as a real writer would
        if index + 1 in marks:
            mark = {"slices": index + 1, "peak_rss_bytes": peak_rss_bytes(), "seconds": time.perf_counter() - start}
            if device.type == "cuda":
                mark["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
            checkpoints.append(mark)

    start = time.perf_counter()
    done = segment_slices(model, _slices(marks[-1], args.image_size, 2), writer=writer, **options)
    seconds = time.perf_counter() - start
    first, last = checkpoints[0], checkpoints[-1]
    growth = last["peak_rss_bytes"] - first["peak_rss_bytes"]
    return {
        "baseline_rss_bytes": baseline,
        "checkpoints": checkpoints,
        "rss_growth_bytes": growth,
        "rss_growth_per_slice_bytes": growth / max(1, last["slices"] - first["slices"]),
        "slices": done,
        "seconds": seconds,
        "slices_per_s": done / seconds if seconds > 0 else None,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
    }


def measure_volume_memory(
    *,
    sam_arch: str,
    mae_arch: str,
    slices: int,
    factor: int = 10,
    batch_size: int,
    image_size: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None,
    sam_precision: str = "auto",
    sam_attention: str = "fused",
    threads: int | None = None,
    sam_checkpoint: str | None = None,
    mae_checkpoint: str | None = None,
    timeout: float | None = None,
) -> dict:
    """Run the memory measurement in a fresh process and return its result.

    Args:
        sam_arch: SAM encoder architecture.
        mae_arch: MAE encoder architecture.
        slices: N, the first checkpoint; the second is ``factor * N``.
        factor: ratio of the two slice counts.
        batch_size: slices per model call.
        image_size: side of the square slices.
        device: where the model runs.
        amp_dtype: autocast dtype on CUDA, or None.
        sam_precision: the SAM encoder's ``precision``.
        sam_attention: the SAM encoder's ``attention``.
        threads: torch threads in the child process (None: torch's default).
        sam_checkpoint: SAM checkpoint or None (random weights).
        mae_checkpoint: MAE checkpoint or None.
        timeout: seconds before the child is stopped.

    Returns:
        ``baseline_rss_bytes`` (after the warm-up batch), ``checkpoints`` (one per slice count: ``slices``,
        ``peak_rss_bytes``, ``gpu_peak_bytes`` on CUDA, ``seconds``), ``rss_growth_bytes`` (peak at 10 N minus
        peak at N) and ``rss_growth_per_slice_bytes``, ``slices_per_s`` and the settings.
    """
    return run_streaming_child(
        "benchmarks.memory",
        "memory measurement",
        [f"--batch-size={batch_size}"],
        sam_arch=sam_arch,
        mae_arch=mae_arch,
        slices=slices,
        factor=factor,
        image_size=image_size,
        device=device,
        amp_dtype=amp_dtype,
        sam_precision=sam_precision,
        sam_attention=sam_attention,
        threads=threads,
        sam_checkpoint=sam_checkpoint,
        mae_checkpoint=mae_checkpoint,
        timeout=timeout,
    )


def run_streaming_child(
    module: str,
    what: str,
    extra_args: list[str],
    *,
    sam_arch: str,
    mae_arch: str,
    slices: int,
    factor: int,
    image_size: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None,
    sam_precision: str,
    sam_attention: str,
    threads: int | None,
    sam_checkpoint: str | None,
    mae_checkpoint: str | None,
    timeout: float | None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run a streaming measurement (``module``'s command line) in a fresh process; return its last JSON line.

    The memory and the whole-volume pipeline measurements build the same model from the same settings in a child
    process (so that peak memory is the measurement's own); this passes those settings once for both.

    Args:
        module: the child's module (``python -m module``).
        what: the measurement's name for the error message.
        extra_args: the child's own options beside the shared ones.
        env: variables set in the child beside ``OMP_NUM_THREADS`` (``setdefault``: the caller's environment wins).
        others: as :func:`measure_volume_memory`.

    Raises:
        RuntimeError: the child failed (the tail of its stderr in the message).
    """
    command = [
        sys.executable,
        "-m",
        module,
        f"--sam-arch={sam_arch}",
        f"--mae-arch={mae_arch}",
        f"--slices={slices}",
        f"--factor={factor}",
        f"--image-size={image_size}",
        f"--device={device}",
        f"--amp={'none' if amp_dtype is None else str(amp_dtype).replace('torch.', '')}",
        f"--sam-precision={sam_precision}",
        f"--sam-attention={sam_attention}",
        *extra_args,
    ]
    if threads:
        command.append(f"--threads={threads}")
    if sam_checkpoint:
        command.append(f"--sam-checkpoint={sam_checkpoint}")
    if mae_checkpoint:
        command.append(f"--mae-checkpoint={mae_checkpoint}")
    child_env = dict(os.environ)
    if threads:
        child_env["OMP_NUM_THREADS"] = str(threads)
    for key, value in (env or {}).items():
        child_env.setdefault(key, value)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command line of the child process; prints one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam-arch", required=True)
    parser.add_argument("--mae-arch", required=True)
    parser.add_argument("--sam-checkpoint")
    parser.add_argument("--mae-checkpoint")
    parser.add_argument("--slices", type=int, required=True)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", help="autocast dtype on CUDA (bfloat16, float16) or none")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--sam-precision", default="auto", help="the SAM encoder's precision")
    parser.add_argument("--sam-attention", default="fused", help="the SAM encoder's attention")
    args = parser.parse_args(argv)
    if args.slices < 1 or args.factor < 1:
        parser.error("--slices and --factor must be >= 1")
    print(json.dumps(_worker(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
