"""Whole datasets: tiled slices at model speed, two ranks against one, and peak memory against the slice's size.

A model that records its pixel size segments every slice at that size, in canvas-sized tiles when the slice is
larger than the canvas (:mod:`scsam_monai.engines.tiling`), and ``--output_format zarr`` writes one OME-Zarr store
with a pyramid that several ``torchrun`` ranks write together. Three measurements of that path, each in fresh
processes, on uint8 OME-Zarr inputs (chunks ``1 x 1024 x 1024``, the model's pixel size in their metadata, so the
scale is 1 and every slice larger than the canvas is tiled), probabilities off, random weights (timings and memory
do not depend on weight values). The encoders are ``"tiny_1024"`` by default: SAM's 1024 canvas, so that a slice is
cut into as many tiles as with ViT-B and the blending bands are as wide, at about the cost per tile of ``"tiny"``
(whose 256 canvas would need 16 times the tiles: hours per measurement on a CPU).

1. ``tiled_pipeline``: :func:`~scsam_monai.engines.inference_job.segment_inputs` (reading, normalising, tiling,
   Gaussian blending, label merging, pyramid and store writing) on a stack against the **model alone** on the same
   tiles: forward passes on resident tile tensors, replaying exactly the calls the pipeline made (their count and
   batch shapes, recorded by a forward pre-hook during a warm-up run), timed in turns (round robin, order rotating).
   ``pipeline_over_model`` = model-alone seconds / pipeline seconds, best of each (target >= 0.85).
2. ``rank_scaling``: the bundle's own ``inference`` run under ``torchrun --standalone --nproc_per_node {1, 2} -m
   monai.bundle run inference`` (``inference.yaml`` with ``tiny_random_encoders: true``, so random encoder weights,
   and a ``models/model.pt`` of a head recording the pixel size), one torch thread per rank
   (``OMP_NUM_THREADS=1``). The input folder holds a small warm-up volume (every rank segments at least one group
   of it) before the timed volume; the time is the timed volume's ``seconds`` in ``predictions.json``, rank 0's
   wall time of :func:`segment_volume` from opening the input to the store's completion after the closing barrier
   (all ranks done). Process start-up, imports, model building and weight loading are therefore excluded, and so
   is every first-call cost. ``two_ranks_over_one`` = slices/s of 2
   ranks / 1 rank (target >= 1.6 on an idle 2-core machine). The two stores' labels are compared.
3. ``peak_rss``: peak resident set size (``getrusage``'s high-water mark) of a fresh process that builds the model,
   segments a small warm-up input, then one slice of each size (2048^2 to 8192^2, 16384^2 with ``largest``), and,
   at one size, 4 N slices with the peak recorded once slice N and slice 4 N are complete (target for 16384^2:
   < 4 GiB). glibc's mmap threshold is fixed as in :mod:`benchmarks.volume_pipeline`.

``quick`` shrinks every measurement to a smoke run of seconds (its numbers mean nothing). Run it alone with
``python -m benchmarks.whole_dataset --out DIR`` (``whole_dataset.json`` and ``whole_dataset.md``) or as the
``whole_dataset`` section of ``scripts/benchmark.py``. The measurements run on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from scsam_monai.engines.tiling import Tiling

__all__ = [
    "MEASUREMENTS",
    "WholeDatasetSizes",
    "FULL",
    "QUICK",
    "default_arch",
    "measure_whole_dataset",
    "markdown_lines",
    "main",
]

MEASUREMENTS = ("pipeline", "scaling", "rss")
CLASS_NAMES = ["background", "nucleus", "mitochondria", "granules"]  # inference.yaml's
PIXEL_NM = 4.0
"""Pixel size of the model and of every input: scale 1, so tiling depends on the slice size alone."""
RSS_TARGET = (16384, 4.0)
"""Peak RSS bound in GiB for one slice of this size (tiny encoders, probabilities off)."""
PIPELINE_TARGET = 0.85
SCALING_TARGET = 1.6


@dataclass(frozen=True)
class WholeDatasetSizes:
    """Sizes of the three measurements.

    Args:
        pipeline_slices: slices of the stack the tiled pipeline and the model alone segment.
        pipeline_size: side of those slices.
        pipeline_repeats: timings of each, taken in turns.
        scaling_slices: slices of the timed volume of the rank runs.
        scaling_size: side of those slices.
        scaling_ranks: rank counts run (the first is the reference of ``two_ranks_over_one``).
        warmup_size: side of the warm-up volume's slices (``batch_size * max(scaling_ranks)`` of them).
        rss_sizes: slice sides of the peak-RSS runs (one slice each).
        rss_largest: an extra, slow size run only when asked for.
        rss_count_size: slice side of the slice-count run.
        rss_count_slices: N of that run (peaks after N and 4 N slices).
        batch_size: slices per group and tiles per model call (the bundle's ``batch_size``).
    """

    pipeline_slices: int = 8
    pipeline_size: int = 2048
    pipeline_repeats: int = 2
    scaling_slices: int = 16
    scaling_size: int = 2048
    scaling_ranks: tuple[int, ...] = (1, 2)
    warmup_size: int = 320
    rss_sizes: tuple[int, ...] = (2048, 4096, 8192)
    rss_largest: int = 16384
    rss_count_size: int = 1024
    rss_count_slices: int = 8
    batch_size: int = 4


FULL = WholeDatasetSizes()
QUICK = WholeDatasetSizes(
    pipeline_slices=1,
    pipeline_size=320,
    pipeline_repeats=1,
    scaling_slices=4,
    scaling_size=256,
    warmup_size=256,
    rss_sizes=(384,),
    rss_largest=1024,
    rss_count_size=256,
    rss_count_slices=1,
    batch_size=1,
)
"""Smoke sizes: 4 tiles of 320^2, 4 one-tile slices on 2 ranks, RSS at 384^2 and at 1 and 4 slices of 256^2."""


def default_arch(quick: bool) -> str:
    """The encoders' architecture when none is given: ``"tiny_1024"``, ``"tiny"`` for the smoke sizes of ``quick``
    (made for its 256 canvas)."""
    return "tiny" if quick else "tiny_1024"


def tiles_per_slice(size: int, tile: int, overlap: float | None = None) -> int:
    """Tiles of a ``size`` x ``size`` slice at scale 1 (MONAI's sliding-window placement, as the product tiles);
    ``overlap`` None: the product's default."""
    if size <= tile:
        return 1
    step = (Tiling(tile) if overlap is None else Tiling(tile, overlap)).step
    per_axis = math.ceil((size - tile) / step) + 1
    return per_axis * per_axis


def write_ome_zarr(path: str | Path, depth: int, size: int, *, seed: int = 0, chunk: int = 1024) -> Path:
    """Write an EM-like uint8 OME-Zarr image ``(depth, size, size)`` in row bands (never held whole).

    Chunks ``(1, chunk, chunk)`` (clipped), blosc/zstd, the pixel size :data:`PIXEL_NM` nm in the metadata. Slices
    are one textured band (smooth blobs and noise) shifted per band and per slice.
    """
    import tensorstore as ts

    path = Path(path)
    path.mkdir(parents=True)
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    scale = {"type": "scale", "scale": [10 * PIXEL_NM, PIXEL_NM, PIXEL_NM]}
    multiscales = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [scale]}]}]
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (path / ".zattrs").write_text(json.dumps({"multiscales": multiscales}))
    side = min(chunk, size)
    metadata = {
        "shape": [depth, size, size],
        "chunks": [1, side, side],
        "dtype": "|u1",
        "compressor": {"id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 1},
        "dimension_separator": "/",
    }
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path / "0")}, "metadata": metadata}
    array = ts.open(spec, create=True).result()
    rng = np.random.default_rng(seed)
    y, x = np.arange(side)[:, None], np.arange(size)[None, :]
    band = 120 + 50 * np.sin(y / 11.0 + rng.random()) * np.cos(x / 17.0) + rng.normal(0, 12, (side, size))
    band = band.clip(0, 255).astype(np.uint8)
    for z in range(depth):
        for top in range(0, size, side):
            rows = min(side, size - top)
            array[z, top : top + rows, :].write(np.roll(band[:rows], 7 * z + 131 * (top // side), axis=1)).result()
    return path


def _model(settings: dict):
    """The model every measurement runs: ``build_scsam`` with random weights (seed 0), recording :data:`PIXEL_NM`."""
    import torch

    from scsam_monai.model import build_scsam

    torch.manual_seed(0)
    model = build_scsam(
        class_names=CLASS_NAMES,
        sam_arch=settings["sam_arch"],
        sam_allow_random_weights=True,
        sam_precision=settings["sam_precision"],
        sam_attention=settings["sam_attention"],
        mae_arch=settings["mae_arch"],
        mae_allow_random_weights=True,
    )
    model.preprocessing.with_pixel_size(PIXEL_NM).attach(model.head)
    return model.eval()


def _segment(model, source: Path, out: Path, batch_size: int) -> dict:
    """``segment_inputs`` as the bundle runs it with ``--output_format zarr``, probabilities and overlays off."""
    from scsam_monai.engines.inference_job import segment_inputs

    (record,) = segment_inputs(
        model,
        source,
        out,
        output_format="zarr",
        class_names=CLASS_NAMES,
        probabilities=False,
        overlay_slices=None,
        summary_overlay=None,
        batch_size=batch_size,
        device="cpu",
        amp=False,
        progress=False,
    )
    return record


# ---- the child processes -------------------------------------------------------------------------------------


def _pipeline_child(settings: dict) -> dict:
    """Measurement 1 in this (fresh) process: the tiled pipeline and the model alone on its tiles, in turns."""
    import torch

    from benchmarks.measure import time_interleaved

    work, stack, batch = Path(settings["work"]), Path(settings["input"]), settings["batch_size"]
    model = _model(settings)
    calls: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    runs = 0

    def pipeline() -> None:
        nonlocal runs
        runs += 1
        out = work / f"pipeline_out_{runs}"
        _segment(model, stack, out, batch)
        shutil.rmtree(out, ignore_errors=True)

    pipeline()  # warm-up, recording the model calls the pipeline makes
    hook.remove()
    resident = {shape: torch.rand(shape, generator=torch.Generator().manual_seed(0)) for shape in set(calls)}

    def model_alone() -> None:
        with torch.inference_mode():
            for shape in calls:
                model(resident[shape], fit_to_canvas=False)

    busy: dict[str, list[tuple[float, float]]] = {}

    def measured(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            busy.setdefault(name, []).append((time.process_time() - cpu, time.perf_counter() - wall))

        return call

    load = [os.getloadavg()[0]]
    functions = {"pipeline": measured("pipeline", pipeline), "model_alone": measured("model_alone", model_alone)}
    samples = time_interleaved(functions, warmup=0, repeats=settings["repeats"])
    load.append(os.getloadavg()[0])
    tiles = sum(shape[0] for shape in calls)
    best_pipeline, best_model = min(samples["pipeline"]), min(samples["model_alone"])
    return {
        "pipeline_over_model": best_model / best_pipeline,
        "pipeline_over_model_median": statistics.median(samples["model_alone"])
        / statistics.median(samples["pipeline"]),
        "pipeline_seconds": samples["pipeline"],
        "model_alone_seconds": samples["model_alone"],
        "pipeline_tiles_per_s": tiles / best_pipeline,
        "model_alone_tiles_per_s": tiles / best_model,
        "pipeline_slices_per_s": settings["slices"] / best_pipeline,
        "tiles": tiles,
        "model_calls": len(calls),
        "call_shapes": [list(shape) for shape in sorted(set(calls))],
        "cpu_busy_threads": {k: sum(c for c, _ in v) / max(1e-9, sum(w for _, w in v)) for k, v in busy.items()},
        "load_average_1min": load,
        "threads": torch.get_num_threads(),
    }


def _rss_child(settings: dict) -> dict:
    """Measurement 3 in this (fresh) process: peak RSS after a warm-up, and after slice N and 4 N of one input."""
    import torch

    from benchmarks.measure import peak_rss_bytes
    from scsam_monai.io.writers.ome_zarr_store import OmeZarrLabelStore

    work, batch = Path(settings["work"]), settings["batch_size"]
    model = _model(settings)
    _segment(model, Path(settings["warmup"]), work / "rss_warmup_out", batch)
    shutil.rmtree(work / "rss_warmup_out", ignore_errors=True)
    baseline = peak_rss_bytes()
    marks = set(settings["marks"])
    checkpoints: list[dict] = []
    written = 0
    original = OmeZarrLabelStore.write_slice

    def write_slice(self, z, labels, probabilities=None) -> None:  # the store's completion of a slice, counted
        nonlocal written
        original(self, z, labels, probabilities)
        written += 1
        if written in marks:
            checkpoints.append(
                {"slices": written, "peak_rss_bytes": peak_rss_bytes(), "seconds": time.perf_counter() - start}
            )

    OmeZarrLabelStore.write_slice = write_slice
    start = time.perf_counter()
    _segment(model, Path(settings["input"]), work / "rss_out", batch)
    seconds = time.perf_counter() - start
    OmeZarrLabelStore.write_slice = original
    shutil.rmtree(work / "rss_out", ignore_errors=True)
    return {
        "baseline_rss_bytes": baseline,
        "checkpoints": checkpoints,
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def _child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    env.update(extra or {})
    repo = str(Path(__file__).resolve().parents[1])  # the bench is imported from the repository root
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return env


def _run_child(kind: str, settings: dict, timeout: float | None, env: dict[str, str] | None = None) -> dict:
    """``python -m benchmarks.whole_dataset --child KIND SETTINGS`` in a fresh process; its last JSON line."""
    command = [sys.executable, "-m", "benchmarks.whole_dataset", "--child", kind, json.dumps(settings)]
    env = env or _child_env(settings["threads"])
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"whole-dataset {kind} measurement failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the measurements ----------------------------------------------------------------------------------------


def _tiled_pipeline(sizes: WholeDatasetSizes, settings: dict, work: Path, timeout: float | None) -> dict:
    stack = write_ome_zarr(work / "pipeline.zarr", sizes.pipeline_slices, sizes.pipeline_size, seed=1)
    child = {**settings, "work": str(work), "input": str(stack), "slices": sizes.pipeline_slices}
    child.update(batch_size=sizes.batch_size, repeats=sizes.pipeline_repeats)
    result = _run_child("pipeline", child, timeout)
    result.update(
        slices=sizes.pipeline_slices,
        slice_size=sizes.pipeline_size,
        batch_size=sizes.batch_size,
        repeats=sizes.pipeline_repeats,
        target=f">= {PIPELINE_TARGET:g}",
        met=result["pipeline_over_model"] >= PIPELINE_TARGET,
    )
    return result


def _write_bundle_model(settings: dict, models: Path) -> Path:
    """``models/model.pt``: the head's state dict as training writes it, recording :data:`PIXEL_NM`."""
    import torch

    models.mkdir(parents=True, exist_ok=True)
    torch.save(_model(settings).state_dict(), models / "model.pt")
    return models / "model.pt"


def _rank_command(ranks: int, overrides: dict) -> list[str]:
    from scsam_monai.bundle_command import bundle_command

    bundle = bundle_command("inference", ["inference.yaml"], overrides=overrides)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *bundle[1:]]


def _same_labels(a: Path, b: Path, depth: int) -> bool:
    import tensorstore as ts

    first, second = (
        ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(p / "0")}}).result() for p in (a, b)
    )
    return all(np.array_equal(first[z].read().result(), second[z].read().result()) for z in range(depth))


def _rank_scaling(sizes: WholeDatasetSizes, settings: dict, work: Path, timeout: float | None) -> dict:
    inputs = work / "scaling_inputs"
    warm = sizes.batch_size * max(sizes.scaling_ranks)  # every rank segments one group of the warm-up volume first
    write_ome_zarr(inputs / "a_warmup.zarr", warm, sizes.warmup_size, seed=2)
    write_ome_zarr(inputs / "b_timed.zarr", sizes.scaling_slices, sizes.scaling_size, seed=3)
    models = _write_bundle_model(settings, work / "models")
    runs = []
    for ranks in sizes.scaling_ranks:
        out = work / f"scaling_{ranks}_ranks"
        overrides = {
            "input": inputs,
            "output_dir": out,
            "ckpt_dir": models.parent,
            "output_format": "zarr",
            "batch_size": sizes.batch_size,
            "overlay_slices": None,
            "tiny_random_encoders": True,  # random weights (no checkpoint) for whichever archs follow
            "sam_arch": settings["sam_arch"],
            "mae_arch": settings["mae_arch"],
            "sam_precision": settings["sam_precision"],
            "sam_attention": settings["sam_attention"],
        }
        command = _rank_command(ranks, overrides)
        load = [os.getloadavg()[0]]
        start = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=_child_env(1), cwd=Path(__file__).parents[1]
        )
        wall = time.perf_counter() - start
        load.append(os.getloadavg()[0])
        if done.returncode != 0:
            raise RuntimeError(
                f"{ranks}-rank inference failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}"
            )
        records = json.loads((out / "predictions" / "predictions.json").read_text())
        (timed,) = [r for r in records if Path(r["input"]).name == "b_timed.zarr"]
        if timed["ranks"] != ranks:
            raise RuntimeError(f"asked for {ranks} ranks, the run used {timed['ranks']}: {timed}")
        runs.append(
            {
                "ranks": ranks,
                "seconds": timed["seconds"],
                "slices_per_s": sizes.scaling_slices / timed["seconds"],
                "command_wall_seconds": wall,
                "warmup_seconds": sum(r["seconds"] for r in records if r is not timed),
                "load_average_1min": load,
                "label": timed["label"],
                "command": shlex.join(str(c) for c in command),
            }
        )
    labels = [Path(r.pop("label")) for r in runs]
    speedup = runs[-1]["slices_per_s"] / runs[0]["slices_per_s"]
    return {
        "runs": runs,
        "two_ranks_over_one": speedup,
        "target": f">= {SCALING_TARGET:g}",
        "met": speedup >= SCALING_TARGET,
        "labels_identical": all(_same_labels(labels[0], other, sizes.scaling_slices) for other in labels[1:]),
        "slices": sizes.scaling_slices,
        "slice_size": sizes.scaling_size,
        "tiles_per_slice": tiles_per_slice(sizes.scaling_size, _canvas(settings)),
        "warmup_volume": [warm, sizes.warmup_size, sizes.warmup_size],
        "batch_size": sizes.batch_size,
        "threads_per_rank": 1,
        "timing": "predictions.json 'seconds' of the timed volume (rank 0: opening it to the store's completion after "
        "every rank is done), after a warm-up volume segmented by every rank in the same run",
    }


def _peak_rss(sizes: WholeDatasetSizes, settings: dict, work: Path, timeout: float | None, largest: bool) -> dict:
    from benchmarks.volume_pipeline import MMAP_THRESHOLD

    warmup = write_ome_zarr(work / "rss_warmup.zarr", 1, sizes.warmup_size, seed=4)
    env = _child_env(
        settings["threads"], {"MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))}
    )
    base = {**settings, "work": str(work), "warmup": str(warmup), "batch_size": sizes.batch_size}
    canvas = _canvas(settings)
    by_size = []
    for size in (*sizes.rss_sizes, *((sizes.rss_largest,) if largest else ())):
        source = write_ome_zarr(work / f"rss_{size}.zarr", 1, size, seed=5)
        child = _run_child("rss", {**base, "input": str(source), "marks": [1]}, timeout, env)
        shutil.rmtree(source)
        by_size.append(
            {
                "size": size,
                "slices": 1,
                "tiles": tiles_per_slice(size, canvas),
                "peak_rss_bytes": child["peak_rss_bytes"],
                "peak_rss_gib": child["peak_rss_bytes"] / 2**30,
                "baseline_rss_bytes": child["baseline_rss_bytes"],
                "seconds": child["seconds"],
            }
        )
    n = sizes.rss_count_slices
    source = write_ome_zarr(work / "rss_count.zarr", 4 * n, sizes.rss_count_size, seed=6)
    child = _run_child("rss", {**base, "input": str(source), "marks": [n, 4 * n]}, timeout, env)
    shutil.rmtree(source)
    marks = child["checkpoints"]
    for mark in marks:
        mark["peak_rss_gib"] = mark["peak_rss_bytes"] / 2**30
    target_size, bound = RSS_TARGET
    measured = next((s["peak_rss_gib"] for s in by_size if s["size"] == target_size), None)
    return {
        "sizes": by_size,
        "counts": {
            "size": sizes.rss_count_size,
            "checkpoints": marks,
            "baseline_rss_bytes": child["baseline_rss_bytes"],
            "growth_bytes": marks[-1]["peak_rss_bytes"] - marks[0]["peak_rss_bytes"],
            "four_n_over_n": marks[-1]["peak_rss_bytes"] / marks[0]["peak_rss_bytes"],
        },
        "target": {
            "size": target_size,
            "bound_gib": bound,
            "value_gib": measured,
            "met": None if measured is None else measured < bound,
        },
        "batch_size": sizes.batch_size,
        "malloc_mmap_threshold": env["MALLOC_MMAP_THRESHOLD_"],
        "threads": settings["threads"],
    }


def _canvas(settings: dict) -> int:
    from scsam_monai.networks.encoders import SAM_ARCHITECTURES

    return int(SAM_ARCHITECTURES[settings["sam_arch"]]["img_size"])


def _command(measurement: str, settings: dict, quick: bool, largest: bool) -> str:
    """The command that measures ``measurement`` alone with these settings."""
    parts = ["python", "-m", "benchmarks.whole_dataset", "--out", "DIR", "--measurements", measurement]
    parts += ["--threads", str(settings["threads"])]
    for key in ("sam_arch", "mae_arch", "sam_precision", "sam_attention"):
        parts += [f"--{key.replace('_', '-')}", settings[key]]
    parts += ["--quick"] if quick else []
    parts += ["--largest"] if largest and measurement == "rss" else []
    return shlex.join(parts)


def measure_whole_dataset(
    *,
    measurements: Sequence[str] = MEASUREMENTS,
    quick: bool = False,
    largest: bool = False,
    sam_arch: str | None = None,
    mae_arch: str | None = None,
    sam_precision: str = "auto",
    sam_attention: str = "fused",
    threads: int = 1,
    sizes: WholeDatasetSizes | None = None,
    work_dir: str | Path | None = None,
    timeout: float | None = None,
) -> dict:
    """Run the whole-dataset measurements (module docstring) and return their results.

    Args:
        measurements: a subset of :data:`MEASUREMENTS`.
        quick: smoke sizes (:data:`QUICK`) instead of :data:`FULL`.
        largest: also the slow largest slice of the peak-RSS measurement (16384^2 unless quick).
        sam_arch: SAM encoder architecture (random weights); None: :func:`default_arch`.
        mae_arch: MAE encoder architecture (random weights); None: :func:`default_arch`.
        sam_precision: the SAM encoder's ``precision``.
        sam_attention: the SAM encoder's ``attention``.
        threads: torch threads of the pipeline and peak-RSS processes (the ranks always get 1 each).
        sizes: explicit sizes (None: by ``quick``).
        work_dir: where the temporary inputs and outputs go (None: the system's temporary folder).
        timeout: seconds before any one child process (or rank run) is stopped.

    Returns:
        ``settings``, ``sizes``, per measurement run ``tiled_pipeline``, ``rank_scaling``, ``peak_rss`` (each with
        its ``command``), ``ratios`` (``tiled_pipeline_over_model``, ``two_ranks_over_one``, ``rss_4n_over_n``)
        and ``seconds``.
    """
    unknown = set(measurements) - set(MEASUREMENTS)
    if unknown:
        raise ValueError(f"unknown measurements {sorted(unknown)}, expected some of {MEASUREMENTS}.")
    sizes = sizes or (QUICK if quick else FULL)
    settings = {
        "sam_arch": sam_arch or default_arch(quick),
        "mae_arch": mae_arch or default_arch(quick),
        "sam_precision": sam_precision,
        "sam_attention": sam_attention,
        "threads": int(threads),
    }
    result: dict = {"quick": quick, "settings": settings, "sizes": asdict(sizes), "random_weights": True}
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="scsam-whole-dataset-", dir=work_dir))
    try:
        for name, key, measure in (
            ("pipeline", "tiled_pipeline", lambda d: _tiled_pipeline(sizes, settings, d, timeout)),
            ("scaling", "rank_scaling", lambda d: _rank_scaling(sizes, settings, d, timeout)),
            ("rss", "peak_rss", lambda d: _peak_rss(sizes, settings, d, timeout, largest)),
        ):
            if name in measurements:
                folder = work / name
                folder.mkdir()
                t = time.perf_counter()
                result[key] = {**measure(folder), "command": _command(name, settings, quick, largest)}
                result[key]["measurement_seconds"] = time.perf_counter() - t
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ratios"] = {
        "tiled_pipeline_over_model": (result.get("tiled_pipeline") or {}).get("pipeline_over_model"),
        "two_ranks_over_one": (result.get("rank_scaling") or {}).get("two_ranks_over_one"),
        "rss_4n_over_n": ((result.get("peak_rss") or {}).get("counts") or {}).get("four_n_over_n"),
    }
    result["seconds"] = time.perf_counter() - started
    return result


# ---- the report ----------------------------------------------------------------------------------------------


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.3f} GiB"


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def markdown_lines(result: dict) -> list[str]:
    """The Markdown of the whole-dataset measurements (a section of ``benchmark.md``, or ``whole_dataset.md``)."""
    s = result["settings"]
    lines = [
        f"Model: `build_scsam` with SAM `{s['sam_arch']}` and MAE `{s['mae_arch']}` (RANDOM weights), recording a "
        f"pixel size of {PIXEL_NM:g} nm equal to the inputs' (uint8 OME-Zarr, chunks 1 x 1024 x 1024): slices "
        "larger than the canvas are tiled. Output: one OME-Zarr store with a pyramid; probabilities and overlays "
        "off; on the CPU." + (" **Quick mode: smoke sizes, the numbers mean nothing.**" if result["quick"] else ""),
    ]
    pipe = result.get("tiled_pipeline")
    if pipe:
        lines += [
            "",
            f"**Tiled pipeline over the model alone**: `segment_inputs` on {_count(pipe['slices'], 'slice')} of "
            f"{pipe['slice_size']}^2 ({pipe['tiles']} tiles in {pipe['model_calls']} model calls, batch "
            f"{pipe['batch_size']}, {_count(pipe['threads'], 'torch thread')}) against the same calls on resident "
            f"tiles, {_count(pipe['repeats'], 'timing')} of each in turns after a warm-up run: "
            f"{pipe['pipeline_tiles_per_s']:.3g} against {pipe['model_alone_tiles_per_s']:.3g} tiles/s, "
            f"`pipeline_over_model` **{pipe['pipeline_over_model']:.3f}** (medians "
            f"{pipe['pipeline_over_model_median']:.3f}; target {pipe['target']}: {_met(pipe['met'])}); "
            f"CPU threads busy {', '.join(f'{k} {v:.2f}' for k, v in pipe['cpu_busy_threads'].items())}.",
            "",
            f"Command: `{pipe['command']}`",
        ]
    scaling = result.get("rank_scaling")
    if scaling:
        lines += [
            "",
            f"**Ranks**: the bundle's `inference` under `torchrun` on {_count(scaling['slices'], 'slice')} of "
            f"{scaling['slice_size']}^2 ({_count(scaling['tiles_per_slice'], 'tile')} each, batch "
            f"{scaling['batch_size']}), {_count(scaling['threads_per_rank'], 'torch thread')} per rank; timed: "
            f"{scaling['timing']}.",
            "",
            "| ranks | seconds | slices/s | whole command s | load (1 min) before, after |",
            "|---|---|---|---|---|",
        ]
        for run in scaling["runs"]:
            load = ", ".join(f"{v:.2f}" for v in run["load_average_1min"])
            lines.append(
                f"| {run['ranks']} | {run['seconds']:.3f} | {run['slices_per_s']:.4g} | "
                f"{run['command_wall_seconds']:.1f} | {load} |"
            )
        lines += [
            "",
            f"`two_ranks_over_one` **{scaling['two_ranks_over_one']:.3f}** (target {scaling['target']} on an idle "
            f"2-core machine: {_met(scaling['met'])}); labels identical across rank counts: "
            f"{_met(scaling['labels_identical'])}.",
            "",
            f"Command: `{scaling['command']}`; the launches:",
            "",
        ]
        lines += [f"- `{run['command']}`" for run in scaling["runs"]]
    rss = result.get("peak_rss")
    if rss:
        lines += [
            "",
            f"**Peak RSS** (a fresh process per size, `getrusage` high-water mark, "
            f"{_count(rss['threads'], 'torch thread')}, batch {rss['batch_size']}, "
            f"MALLOC_MMAP_THRESHOLD_={rss['malloc_mmap_threshold']}; the last rows: one run of 4 N slices, peaks "
            "when slice N and slice 4 N are complete):",
            "",
            "| slice | slices | tiles per slice | peak RSS | after warm-up | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for row in rss["sizes"]:
            lines.append(
                f"| {row['size']}^2 | 1 | {row['tiles']} | {_gib(row['peak_rss_bytes'])} | "
                f"{_gib(row['baseline_rss_bytes'])} | {row['seconds']:.1f} |"
            )
        counts = rss["counts"]
        for mark in counts["checkpoints"]:
            lines.append(
                f"| {counts['size']}^2 | {mark['slices']} | {tiles_per_slice(counts['size'], _canvas(s))} | "
                f"{_gib(mark['peak_rss_bytes'])} | {_gib(counts['baseline_rss_bytes'])} | {mark['seconds']:.1f} |"
            )
        target = rss["target"]
        value = target["value_gib"]
        bound = "not measured (--largest)" if value is None else f"{value:.3f} GiB, {_met(target['met'])}"
        lines += [
            "",
            f"From {counts['checkpoints'][0]['slices']} to {counts['checkpoints'][-1]['slices']} slices of "
            f"{counts['size']}^2 (one run): growth {counts['growth_bytes'] / 2**20:.1f} MiB "
            f"(`rss_4n_over_n` {counts['four_n_over_n']:.3f}). Target for {target['size']}^2: "
            f"< {target['bound_gib']:g} GiB: {bound}.",
            "",
            f"Command: `{rss['command']}`",
        ]
    return lines


def _environment(threads: int) -> dict:
    import torch

    from benchmarks.run import _cpu_name

    return {
        "device": "cpu",
        "device_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "load_average_1min": os.getloadavg()[0],
    }


def write_results(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``whole_dataset.json`` and ``whole_dataset.md`` into ``out_dir``; return their paths."""
    from scsam_monai.atomic import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = result["environment"]
    header = [
        "# ScSAM benchmark: whole datasets",
        "",
        f"- {result['created']}; {env['device_name']}, {env['cpu_count']} CPUs; torch {env['torch']}; "
        f"load average (1 min) at the start {env['load_average_1min']:.2f}.",
        f"- Command: `{result['command']}`",
        "",
    ]
    json_path, md_path = out / "whole_dataset.json", out / "whole_dataset.md"
    atomic_write_text(json_path, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(md_path, "\n".join(header + markdown_lines(result)) + "\n")
    return json_path, md_path


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.whole_dataset``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.whole_dataset", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output folder (whole_dataset.json, whole_dataset.md)")
    p.add_argument("--measurements", default=",".join(MEASUREMENTS), help=f"a subset of {','.join(MEASUREMENTS)}")
    p.add_argument("--quick", action="store_true", help="smoke sizes (seconds; the numbers mean nothing)")
    p.add_argument("--largest", action="store_true", help="peak RSS also at 16384^2 (half an hour on 2 CPUs)")
    p.add_argument("--sam-arch", help="SAM architecture, random weights (default: tiny_1024; tiny with --quick)")
    p.add_argument("--mae-arch", help="MAE architecture, random weights (default: tiny_1024; tiny with --quick)")
    p.add_argument("--sam-precision", default="auto")
    p.add_argument("--sam-attention", default="fused")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the pipeline and peak-RSS processes")
    p.add_argument("--work-dir", help="where the temporary inputs and outputs go")
    p.add_argument("--timeout", type=float, help="seconds before a child process or rank run is stopped")
    p.add_argument("--child", nargs=2, metavar=("KIND", "SETTINGS"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and write the two files (or, with ``--child``, one child's measurement as JSON)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        kind, settings = args.child
        import torch

        torch.set_num_threads(json.loads(settings)["threads"])
        child = {"pipeline": _pipeline_child, "rss": _rss_child}[kind]
        print(json.dumps(child(json.loads(settings))))
        return 0
    if not args.out:
        parser.error("--out is required")
    measurements = [m.strip() for m in args.measurements.split(",") if m.strip()]
    result = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(
            ["python", "-m", "benchmarks.whole_dataset", *(argv if argv is not None else sys.argv[1:])]
        ),
        "environment": _environment(args.threads),
    }
    result.update(
        measure_whole_dataset(
            measurements=measurements,
            quick=args.quick,
            largest=args.largest,
            sam_arch=args.sam_arch,
            mae_arch=args.mae_arch,
            sam_precision=args.sam_precision,
            sam_attention=args.sam_attention,
            threads=args.threads,
            work_dir=args.work_dir,
            timeout=args.timeout,
        )
    )
    json_path, md_path = write_results(result, args.out)
    for key, value in result["ratios"].items():
        print(f"{key:28s} {'n/a' if value is None else f'{value:.4g}'}")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
