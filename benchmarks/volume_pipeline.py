"""Whole volumes at model speed: ``segment_inputs`` on a uint16 TIFF stack on disk against the model alone.

:func:`measure_volume_pipeline` runs, in a fresh Python process (so that the peak resident set size belongs to
this measurement alone): it writes two uint16 TIFF stacks of N and ``factor`` N EM-like slices to a temporary
folder, builds the model (random weights unless checkpoints are given), warms up the model and one whole
pipeline run on a small stack, then

1. runs the real :func:`~scsam_monai.engines.inference_job.segment_inputs` on each stack with
   ``image_normalization="prepared"`` (the per-volume window measured in a first streaming pass, as
   ``scsam-prepare`` measures it; then reading, normalising, host-to-device copies, the model and TIFF writing,
   overlapped), recording the peak RSS (and the GPU's peak allocation) after each: flat memory means equal
   peaks at N and ``factor`` N slices (glibc's mmap threshold fixed, see :func:`measure_volume_pipeline`);
2. times the **model alone** (forward passes on a resident batch already on the device, synchronised) on
   ``factor`` N slices, in turns with further pipeline runs on the large stack (``repeats`` of each), so that a
   busy machine slows both alike.

``pipeline_over_model`` is the pipeline's throughput on the large stack over the model alone's (best timing of
each): 1.0 when reading, normalising, copying and writing are entirely hidden behind the model's compute
(target >= 0.85).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.memory import run_streaming_child
from scsam_monai.data.preprocessing import ImagePreprocessing

__all__ = ["MMAP_THRESHOLD", "measure_volume_pipeline", "write_uint16_stack", "main"]

MMAP_THRESHOLD = 131072
"""``MALLOC_MMAP_THRESHOLD_`` of the child process (glibc's initial value, made fixed; see
:func:`measure_volume_pipeline`)."""


def write_uint16_stack(path: str | Path, depth: int, size: int, seed: int = 0) -> Path:
    """Write an EM-like uint16 TIFF stack ``(depth, size, size)`` slice by slice (never held whole).

    Slices are one noise field shifted and offset per slice (cheap to make, different from each other), with an
    intensity drift along z so that a per-volume window differs from per-slice ones.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    base = rng.normal(2000.0, 300.0, (size, size))

    def slices() -> Iterator[np.ndarray]:
        for z in range(depth):
            yield (np.roll(base, 7 * z, axis=1) + 3.0 * z).clip(0, 65535).astype(np.uint16)

    path = Path(path)
    tifffile.imwrite(path, slices(), shape=(depth, size, size), dtype=np.uint16, imagej=True, metadata={"axes": "ZYX"})
    return path


def _model_alone(model, slices: int, batch_size: int, size: int, device: torch.device, amp_dtype) -> float:
    """Seconds the model takes on ``slices`` slices in batches of ``batch_size`` (inputs already on the device)."""
    from benchmarks.measure import autocast_context, synchronizer

    sync = synchronizer(device)
    images = torch.rand(batch_size, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    sync()
    start = time.perf_counter()
    done = 0
    with torch.inference_mode(), autocast_context(device, amp_dtype):
        while done < slices:
            n = min(batch_size, slices - done)
            model(images[:n])
            done += n
    sync()
    return time.perf_counter() - start


def _worker(args: argparse.Namespace) -> dict:
    from benchmarks.measure import peak_rss_bytes
    from benchmarks.models import build_model
    from scsam_monai.engines.inference_job import segment_inputs

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp_dtype = None if args.amp == "none" else getattr(torch, args.amp)
    batch_size = args.batch_size or (8 if cuda else 1)
    sizes = sorted({args.slices, args.slices * args.factor})
    work = Path(tempfile.mkdtemp(prefix="scsam-volume-pipeline-", dir=args.work_dir))
    try:
        stacks = {n: write_uint16_stack(work / f"volume_{n}.tif", n, args.image_size, seed=n) for n in sizes}
        model = build_model(
            args.sam_arch,
            args.mae_arch,
            sam_checkpoint=args.sam_checkpoint,
            mae_checkpoint=args.mae_checkpoint,
            device=device,
            sam_precision=args.sam_precision,
            sam_attention=args.sam_attention,
        )
        ImagePreprocessing("prepared").attach(model.head)  # the per-volume window: what this measures
        options = {"batch_size": batch_size, "device": device, "amp": amp_dtype is not None, "progress": False}
        if amp_dtype is not None:
            options["amp_dtype"] = amp_dtype

        def pipeline(n: int, stack: Path) -> tuple[float, dict]:
            out = work / f"out_{n}"
            start = time.perf_counter()
            (record,) = segment_inputs(model, stack, out, overlay_slices=None, summary_overlay=None, **options)
            seconds = time.perf_counter() - start
            shutil.rmtree(out, ignore_errors=True)
            return seconds, record

        # warm-up: the model, and one whole pipeline run (threads, allocator arenas, lookup tables) on a small stack
        _model_alone(model, batch_size, batch_size, args.image_size, device, amp_dtype)
        pipeline(0, write_uint16_stack(work / "warmup.tif", 8 * batch_size, args.image_size, seed=1))
        baseline = peak_rss_bytes()
        runs = []
        for n in sizes:
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            seconds, record = pipeline(n, stacks[n])
            run = {"slices": n, "seconds": seconds, "slices_per_s": n / seconds, "peak_rss_bytes": peak_rss_bytes()}
            if cuda:
                run["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
            run["intensity_window"] = [record["intensity_window"]["low"], record["intensity_window"]["high"]]
            runs.append(run)
        # throughput: model alone and the pipeline on the large stack in turns (a busy machine slows both alike)
        pipeline_seconds = [runs[-1]["seconds"]]
        model_seconds = []
        for round_ in range(args.repeats):
            model_seconds.append(_model_alone(model, sizes[-1], batch_size, args.image_size, device, amp_dtype))
            if round_ < args.repeats - 1:
                pipeline_seconds.append(pipeline(sizes[-1], stacks[sizes[-1]])[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best_model, best_pipeline = min(model_seconds), min(pipeline_seconds)
    result = {
        "pipeline_over_model": best_model / best_pipeline,
        "pipeline_over_model_median": float(np.median(model_seconds) / np.median(pipeline_seconds)),
        "slices_timed": sizes[-1],
        "model_alone_seconds": model_seconds,
        "pipeline_seconds": pipeline_seconds,
        "model_alone_slices_per_s": sizes[-1] / best_model,
        "pipeline_slices_per_s": sizes[-1] / best_pipeline,
        "pipeline": runs,
        "baseline_rss_bytes": baseline,
        "rss_growth_bytes": runs[-1]["peak_rss_bytes"] - runs[0]["peak_rss_bytes"],
        "batch_size": batch_size,
        "image_size": args.image_size,
        "device": str(device),
        "amp_dtype": args.amp,
        "threads": torch.get_num_threads(),
        "sam_arch": args.sam_arch,
        "mae_arch": args.mae_arch,
        "image_normalization": "prepared",
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    if cuda:
        result["gpu_growth_bytes"] = runs[-1]["gpu_peak_bytes"] - runs[0]["gpu_peak_bytes"]
    return result


def measure_volume_pipeline(
    *,
    sam_arch: str = "tiny",
    mae_arch: str = "tiny",
    slices: int = 1,
    factor: int = 10,
    image_size: int = 256,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    sam_precision: str = "auto",
    sam_attention: str = "fused",
    threads: int | None = None,
    sam_checkpoint: str | None = None,
    mae_checkpoint: str | None = None,
    repeats: int = 2,
    work_dir: str | Path | None = None,
    timeout: float | None = None,
) -> dict:
    """Run the measurement in a fresh process and return its result.

    Args:
        sam_arch: SAM encoder architecture.
        mae_arch: MAE encoder architecture.
        slices: N, the smaller stack; the larger has ``factor`` N slices (e.g. 1 and 10 on a CPU, 100 and 1000
            on a GPU).
        factor: ratio of the two stack sizes.
        image_size: side of the square slices.
        batch_size: slices per model call; None for ``segment_slices``' default (8 on a GPU, 1 on a CPU).
        device: where the model runs.
        amp_dtype: autocast dtype (CUDA), or None for none.
        sam_precision: the SAM encoder's ``precision``.
        sam_attention: the SAM encoder's ``attention``.
        threads: torch threads in the child (and ``OMP_NUM_THREADS``); None for torch's default.
        sam_checkpoint: SAM checkpoint or None (random weights).
        mae_checkpoint: MAE checkpoint or None.
        repeats: timings of the model alone and of the pipeline on the large stack, taken in turns.
        work_dir: where the temporary stacks go (None: the system's temporary folder).
        timeout: seconds before the child is stopped.

    Returns:
        ``pipeline_over_model`` (pipeline throughput on the large stack / model-alone throughput, best of
        ``repeats`` timings each; ``pipeline_over_model_median`` from the medians), ``model_alone_seconds`` and
        ``pipeline_seconds`` (every timing of ``slices_timed`` slices), ``model_alone_slices_per_s``,
        ``pipeline_slices_per_s``, ``pipeline`` (per stack: ``slices``, ``seconds``, ``slices_per_s``,
        ``peak_rss_bytes``, ``gpu_peak_bytes`` on CUDA, the measured ``intensity_window``), ``baseline_rss_bytes``
        (after a warm-up pipeline run), ``rss_growth_bytes`` (peak after the large stack minus peak after the small
        one; ``gpu_growth_bytes`` likewise) and the settings. The child runs with glibc's mmap threshold fixed
        (``MALLOC_MMAP_THRESHOLD_``, :data:`MMAP_THRESHOLD`, unless the environment sets it; reported as
        ``malloc_mmap_threshold``): with glibc's default dynamic threshold, buffers freed after the first large
        frees stay in the allocator's arenas and the resident size grows once by a few MB, whatever the number
        of slices.

    Raises:
        RuntimeError: the child process failed (its stderr's tail is in the message).
    """
    if slices < 1 or factor < 1 or repeats < 1:
        raise ValueError(f"slices, factor and repeats must be >= 1, got {slices}, {factor} and {repeats}.")
    extra = [f"--repeats={repeats}"]
    if batch_size:
        extra.append(f"--batch-size={batch_size}")
    if work_dir:
        extra.append(f"--work-dir={work_dir}")
    # glibc raises its mmap threshold after large frees and then keeps freed buffers in its arenas: a one-time
    # growth of the resident size that is not accumulation; a fixed threshold measures what the pipeline holds
    return run_streaming_child(
        "benchmarks.volume_pipeline",
        "volume pipeline measurement",
        extra,
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
        env={"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)},
    )


def main(argv: list[str] | None = None) -> int:
    """Command line of the child process; prints one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam-arch", default="tiny")
    parser.add_argument("--mae-arch", default="tiny")
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", help="autocast dtype on CUDA (bfloat16, float16) or none")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--sam-precision", default="auto")
    parser.add_argument("--sam-attention", default="fused")
    parser.add_argument("--work-dir")
    parser.add_argument("--sam-checkpoint")
    parser.add_argument("--mae-checkpoint")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.slices < 1 or args.factor < 1 or args.repeats < 1:
        parser.error("--slices, --factor and --repeats must be >= 1")
    print(json.dumps(_worker(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
