"""Run the benchmark sections of a profile and assemble the report."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.mae_throughput import mae_pretraining_throughput
from benchmarks.memory import measure_volume_memory
from benchmarks.models import build_model, describe_weights
from benchmarks.profiles import BenchmarkProfile, get_profile
from benchmarks.report import RATIO_KEYS, check_targets, compute_ratios, matmul_fractions, write_report
from benchmarks.sections import cache_read, flops_section, head_training, per_image_inference
from benchmarks.volume_pipeline import measure_volume_pipeline
from benchmarks.whole_dataset import measure_whole_dataset
from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder
from scsam_monai.networks.precision import cpu_has_native_bf16, dtype_name

__all__ = ["SECTIONS", "EXTRA_SECTIONS", "encoder_parameters", "run_benchmark"]

logger = logging.getLogger(__name__)

SECTIONS = ("inference", "training", "data", "flops", "pipeline", "mae")
EXTRA_SECTIONS = ("whole_dataset",)
"""Sections run only when named (``--sections whole_dataset``): they take far longer than the others."""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _environment(device: torch.device, amp_dtype: torch.dtype | None, sam_dtype: torch.dtype | None) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "amp_dtype": None if amp_dtype is None else dtype_name(amp_dtype),
        "sam_dtype": dtype_name(sam_dtype),
        "cuda": torch.version.cuda,
    }


def encoder_parameters(sam_arch: str, mae_arch: str) -> int:
    """Parameters of the SAM and MAE encoders of these architectures, built on the meta device (no weights, no time).

    Args:
        sam_arch: ``FrozenSamEncoder``'s ``arch``.
        mae_arch: ``FrozenMaeEncoder``'s ``arch``.
    """
    encoders_logger = logging.getLogger(FrozenSamEncoder.__module__)
    level = encoders_logger.level
    encoders_logger.setLevel(logging.ERROR)  # no random-weights warning for encoders that are only counted
    try:
        with torch.device("meta"):
            encoders = [
                FrozenSamEncoder(arch=sam_arch, allow_random_weights=True),
                FrozenMaeEncoder(arch=mae_arch, allow_random_weights=True),
            ]
    finally:
        encoders_logger.setLevel(level)
    return sum(p.numel() for encoder in encoders for p in encoder.parameters())


def _sizes(profile: BenchmarkProfile) -> dict:
    """The profile's encoder parameters against the full profile's (the real model's)."""
    full = get_profile("full")
    return {
        "archs": [profile.sam_arch, profile.mae_arch],
        "encoder_parameters": encoder_parameters(profile.sam_arch, profile.mae_arch),
        "full_archs": [full.sam_arch, full.mae_arch],
        "full_encoder_parameters": encoder_parameters(full.sam_arch, full.mae_arch),
    }


def _notes(profile: BenchmarkProfile, device: torch.device, report: dict) -> list[str]:
    notes = []
    if report["random_weights"]:
        notes.append("Encoders with RANDOM weights: the timings are those of the real architectures, nothing else is.")
    if profile.sam_arch == "tiny" or profile.mae_arch == "tiny":
        sizes = report["sizes"]
        share = sizes["encoder_parameters"] / sizes["full_encoder_parameters"]
        cost = (
            f"Tiny encoders: {sizes['encoder_parameters']:,} parameters, {share:.1%} of the "
            f"{sizes['full_encoder_parameters']:,} of SAM {sizes['full_archs'][0]} + the paper's MAE "
            f"({sizes['full_archs'][1]})"
        )
        flops = (report.get("per_image") or {}).get("flops_per_image")
        if flops:
            ratio = flops["head"] / (flops["sam_encoder"] + flops["mae_encoder"])
            cost += f", while the head is the real-size head ({ratio:.2f} times their FLOPs per image in this run)"
        notes.append(
            cost + ", so head_over_encoders, full_over_* and encoder_flops_fraction say nothing about the real model; "
            "the targets on them apply to the full profile."
        )
    memory = report.get("memory")
    if memory:
        counts = [m["slices"] for m in memory["checkpoints"]]
        if counts != [100, 1000]:
            notes.append(
                f"memory_1000_over_100_slices was measured at {counts[0]} and {counts[-1]} slices (peak RSS after "
                "slice N and after slice 10 N of one streaming run in a fresh process)."
            )
    env = report["environment"]
    if device.type == "cpu":
        notes.append(
            f"CPU run: the SAM encoder computes in {env['sam_dtype']} (its precision setting; bf16 autocast where the "
            "CPU has native bf16), the MAE encoder and the head in float32. Batching all classes (or slices) in one "
            "call saves no arithmetic, only call overhead, which is small next to the FLOPs on a CPU; batching pays "
            "on a GPU (launch- and occupancy-bound small calls)."
        )
    if report.get("per_image"):
        notes.append(
            "encoder_speedup_over_reference: segment-anything's float32 ImageEncoderViT (its own attention, same "
            "weights, same preprocessing) over the product's SAM encoder, timed in turns in this run. SAM FLOPs: "
            + report["per_image"]["sam_encoder"]["flop_rule"]
            + "."
        )
    return notes


def run_benchmark(
    profile: BenchmarkProfile,
    out_dir: str | Path,
    *,
    device: str | torch.device = "auto",
    amp: bool = True,
    sections: Sequence[str] = SECTIONS,
    sam_checkpoint: str | None = None,
    mae_checkpoint: str | None = None,
    compile: bool = False,
    channels_last: bool = True,
    threads: int | None = None,
    memory_timeout: float | None = None,
    sam_precision: str = "auto",
    sam_attention: str = "fused",
    whole_dataset_quick: bool = False,
    whole_dataset_largest: bool = False,
) -> dict:
    """Measure the sections of ``profile``, write ``benchmark.json`` and ``benchmark.md`` into ``out_dir``.

    Args:
        profile: sizes and counts.
        out_dir: output folder.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        amp: autocast on CUDA (bfloat16 where supported, else float16); never on CPU (the SAM encoder follows its
            own ``sam_precision``).
        sections: subset of :data:`SECTIONS` and :data:`EXTRA_SECTIONS`.
        sam_checkpoint: SAM checkpoint; None for random weights.
        mae_checkpoint: MAE checkpoint; None for random weights.
        compile: also time ``torch.compile``-d encoders and head (section 1).
        channels_last: also time the head with channels-last fusion (section 1).
        threads: torch threads during the run (None: torch's current setting); restored afterwards. Only this
            process's intra-op pool is sized: the memory child gets the same count (and ``OMP_NUM_THREADS``).
        memory_timeout: seconds before the memory child process is stopped.
        sam_precision: the SAM encoder's ``precision`` (``FrozenSamEncoder``): auto, bf16, fp16 or fp32.
        sam_attention: the SAM encoder's ``attention``: fused or reference.
        whole_dataset_quick: the ``whole_dataset`` section at its smoke sizes (seconds; numbers without meaning).
        whole_dataset_largest: the ``whole_dataset`` section's peak RSS also at its largest slice (hours on a CPU).

    Returns:
        The report (what ``benchmark.json`` holds).
    """
    unknown = set(sections) - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}, expected some of {SECTIONS + EXTRA_SECTIONS}.")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(
            profile,
            out_dir,
            device=device,
            amp=amp,
            sections=sections,
            sam_checkpoint=sam_checkpoint,
            mae_checkpoint=mae_checkpoint,
            compile=compile,
            channels_last=channels_last,
            memory_timeout=memory_timeout,
            sam_precision=sam_precision,
            sam_attention=sam_attention,
            threads=threads,
            whole_dataset_quick=whole_dataset_quick,
            whole_dataset_largest=whole_dataset_largest,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    profile: BenchmarkProfile,
    out_dir: str | Path,
    *,
    device: str | torch.device,
    amp: bool,
    sections: Sequence[str],
    sam_checkpoint: str | None,
    mae_checkpoint: str | None,
    compile: bool,
    channels_last: bool,
    memory_timeout: float | None,
    sam_precision: str,
    sam_attention: str,
    threads: int | None,
    whole_dataset_quick: bool,
    whole_dataset_largest: bool,
) -> dict:
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else torch.device(device)
    )
    amp_dtype = None
    if amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    batch = profile.infer_batch_cuda if device.type == "cuda" else profile.infer_batch
    started = time.perf_counter()
    model = build_model(
        profile.sam_arch,
        profile.mae_arch,
        sam_checkpoint=sam_checkpoint,
        mae_checkpoint=mae_checkpoint,
        device=device,
        sam_precision=sam_precision,
        sam_attention=sam_attention,
    )
    sam_dtype = model.sam_encoder.compute_dtype(device)
    report: dict = {
        "schema": 2,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": profile.to_dict(),
        "environment": _environment(device, amp_dtype, sam_dtype),
        **describe_weights(model),
        "sizes": _sizes(profile),
        "sections": list(sections),
    }
    timings: dict = {}
    # the streaming measurements (memory, whole-volume pipeline) run the same model in a fresh process
    streaming = {
        "sam_arch": profile.sam_arch,
        "mae_arch": profile.mae_arch,
        "slices": profile.memory_slices if device.type == "cuda" else profile.memory_slices_cpu,
        "batch_size": batch,
        "image_size": profile.image_size,
        "device": device,
        "amp_dtype": amp_dtype,
        "sam_precision": sam_precision,
        "sam_attention": sam_attention,
        "threads": torch.get_num_threads(),
        "sam_checkpoint": sam_checkpoint,
        "mae_checkpoint": mae_checkpoint,
        "timeout": memory_timeout,
    }
    if "inference" in sections:
        logger.info("Section 1: per-image inference (batch %d)", batch)
        t = time.perf_counter()
        report["per_image"] = per_image_inference(
            model,
            profile,
            device=device,
            batch=batch,
            amp_dtype=amp_dtype,
            channels_last=channels_last,
            compile=compile,
        )
        timings["inference"] = time.perf_counter() - t
    if "training" in sections:
        logger.info("Section 2: head training (batch %d)", profile.train_batch)
        t = time.perf_counter()
        report["training"] = head_training(model.head, profile, device=device, amp_dtype=amp_dtype)
        timings["training"] = time.perf_counter() - t
    if "data" in sections:
        logger.info("Section 3: embedding-cache reads and volume-inference memory")
        t = time.perf_counter()
        report["cache"] = cache_read(profile, grid=model.head.grid_size)
        report["memory"] = measure_volume_memory(**streaming)
        timings["data"] = time.perf_counter() - t
    if "flops" in sections:
        logger.info("Section 4: matmul throughput")
        t = time.perf_counter()
        matmul = flops_section(device, profile, amp_dtype, sam_dtype)
        flops: dict = {"matmul": matmul}
        per = report.get("per_image")
        if per:
            flops.update(matmul_fractions(per["flops_per_image"], per["seconds_per_image"], matmul))
        report["flops"] = flops
        timings["flops"] = time.perf_counter() - t
    if "pipeline" in sections:
        logger.info("Section 5: whole-volume inference from a uint16 TIFF on disk against the model alone")
        t = time.perf_counter()
        report["volume_pipeline"] = measure_volume_pipeline(**streaming, factor=10)
        timings["pipeline"] = time.perf_counter() - t
    if "mae" in sections:
        logger.info("Section 6: MAE pre-training throughput (resident crops, %s)", profile.mae_arch)
        t = time.perf_counter()
        # the recipe's batch on a GPU; a small batch on a CPU, where one step of 256 crops takes minutes
        report["mae_pretraining"] = mae_pretraining_throughput(
            profile.mae_arch,
            device=device,
            amp=amp_dtype is not None,
            batch_size=None if device.type == "cuda" else 8,
            repeats=10 if device.type == "cuda" else 3,
        )
        timings["mae"] = time.perf_counter() - t
    if "whole_dataset" in sections:
        logger.info("Section 7: whole datasets (tiled slices, 1 and 2 ranks, peak RSS by slice size) on the CPU")
        t = time.perf_counter()
        report["whole_dataset"] = measure_whole_dataset(
            quick=whole_dataset_quick,
            largest=whole_dataset_largest,
            # the tiny profile: the section's own test encoders (benchmarks.whole_dataset.default_arch)
            sam_arch=None if profile.sam_arch == "tiny" else profile.sam_arch,
            mae_arch=None if profile.mae_arch == "tiny" else profile.mae_arch,
            sam_precision=sam_precision,
            sam_attention=sam_attention,
            threads=threads or 1,  # one torch thread unless asked: the ranks get one each
            timeout=memory_timeout,
        )
        timings["whole_dataset"] = time.perf_counter() - t
    report["ratios"] = compute_ratios(report)
    assert all(key in report["ratios"] for key in RATIO_KEYS)
    report["targets"] = check_targets(report["ratios"], device.type)
    report["notes"] = _notes(profile, device, report)
    timings["total"] = time.perf_counter() - started
    report["section_seconds"] = timings
    write_report(report, out_dir)
    return report
