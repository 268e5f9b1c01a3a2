"""Equality and speed check of the SAM encoder's fast paths against segment-anything's encoder, same weights.

``python -m benchmarks.sam_check --out DIR`` (``scripts/gpu_check.sh`` runs it on a GPU) builds the SAM
encoder (random weights, the real architecture) and compares, on the same images:

- the fused attention in float32 with segment-anything's float32 ``ImageEncoderViT`` (TF32 off): relative L2
  below ``--fp32-tol`` (1e-4);
- the product's default precision (bf16 on GPUs and bf16-capable CPUs) with the same reference: below
  ``--low-tol`` (2%);
- on CUDA, the fused attention forced onto the memory-efficient SDPA kernel (the one that takes an additive bias;
  flash attention takes none) and onto the math kernel: equal to the default dispatch within ``--low-tol``;
- unless ``--no-compile``, ``torch.compile`` of the ViT (default mode, and on CUDA ``reduce-overhead``: CUDA
  graphs): equal to eager within ``--low-tol``.

Each variant is timed in turns with the others (seconds per image), with the matmul rate of its dtype measured in
the same run, so ``sam_fraction_of_matmul`` and the speed-ups are ratios of one run. Writes ``sam_check.json``;
exits 1 when a tolerance is exceeded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.measure import count_flops, matmul_throughput, summarize, synchronizer, time_interleaved
from benchmarks.sections import reference_sam_encoder
from scsam_monai.atomic import atomic_write_text
from scsam_monai.networks.encoders import FrozenSamEncoder
from scsam_monai.networks.precision import dtype_name

__all__ = ["run_sam_check", "main"]

logger = logging.getLogger(__name__)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _sdpa_backend(name: str):
    """A context that lets scaled_dot_product_attention use only the backend ``name`` (e.g. EFFICIENT_ATTENTION)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name)])


def run_sam_check(
    *,
    arch: str = "vit_b",
    device: str = "auto",
    batch: int = 2,
    repeats: int = 3,
    compile: bool = True,
    fp32_tol: float = 1e-4,
    low_tol: float = 0.02,
    seed: int = 0,
) -> dict:
    """Compare and time the SAM encoder's paths; see the module docstring.

    Args:
        arch: SAM architecture (``"tiny"`` for a quick CPU run).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        batch: images per call.
        repeats: timed rounds (after one warm-up round).
        compile: also check and time ``torch.compile``-d encoders.
        fp32_tol: relative L2 bound of the float32 fused path against the reference.
        low_tol: relative L2 bound of bf16/fp16 paths, forced kernels and compiled encoders.
        seed: seed of the weights and images.

    Returns:
        The report: ``checks`` (name -> ``{"rel_l2", "tol", "passed"}``), ``seconds_per_image`` (summaries),
        ``speedup_over_reference`` (name -> reference float32 seconds / seconds), ``sam_fraction_of_matmul``,
        ``matmul``, ``flops_per_image``, ``passed``, and the settings.
    """
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 for the equality check
    try:
        fast = FrozenSamEncoder(arch=arch, allow_random_weights=True, seed=seed, compile=False).to(dev)
        fp32 = FrozenSamEncoder(arch=arch, allow_random_weights=True, seed=seed, precision="fp32", compile=False).to(
            dev
        )
        reference = reference_sam_encoder(fp32)
        size = fast.img_size
        images = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)).to(dev)
        low_dtype = fast.compute_dtype(dev)
        low = dtype_name(low_dtype)
        sync = synchronizer(dev)
        checks: dict[str, dict] = {}
        with torch.inference_mode():
            flops, expected = count_flops(lambda: reference(images))
            outputs = {"fused_fp32": fp32(images), low: fast(images)}

            def check(name: str, out: torch.Tensor, target: torch.Tensor, tol: float) -> None:
                err = _rel_l2(out, target)
                checks[name] = {"rel_l2": err, "tol": tol, "passed": bool(err < tol)}
                logger.info("%s: relative L2 %.3g (tolerance %g)", name, err, tol)

            check("fused_fp32_vs_reference_fp32", outputs["fused_fp32"], expected, fp32_tol)
            if low_dtype is not None:
                check(
                    f"fused_{dtype_name(low_dtype)}_vs_reference_fp32",
                    outputs[dtype_name(low_dtype)],
                    expected,
                    low_tol,
                )
            if dev.type == "cuda":
                for backend in ("EFFICIENT_ATTENTION", "MATH"):
                    with _sdpa_backend(backend):
                        forced = fast(images)
                    check(f"sdpa_{backend.lower()}_vs_default", forced, outputs[low], low_tol)
        functions: dict[str, Callable[[], object]] = {
            "reference_fp32": lambda: reference(images),
            "fused_fp32": lambda: fp32(images),
        }
        if low_dtype is not None:
            functions["reference_" + dtype_name(low_dtype)] = lambda: reference(images, amp_dtype=low_dtype)
            functions["fused_" + dtype_name(low_dtype)] = lambda: fast(images)
        compile_seconds = {}
        if compile:
            modes = ["default"] + (["reduce-overhead"] if dev.type == "cuda" else [])
            for mode in modes:
                enc = FrozenSamEncoder(arch=arch, allow_random_weights=True, seed=seed, compile=mode).to(dev)
                start = time.perf_counter()
                with torch.inference_mode():
                    out = enc(images)
                    out = enc(images)  # CUDA graphs record on a later call
                sync()
                compile_seconds[mode] = time.perf_counter() - start
                check(
                    f"compiled_{mode}_vs_eager", out, outputs[dtype_name(low_dtype)] if low_dtype else expected, low_tol
                )
                functions[f"compiled_{mode}"] = lambda enc=enc: enc(images)

        def inference(fn: Callable[[], object]) -> Callable[[], object]:
            def call() -> object:
                with torch.inference_mode():
                    return fn()

            return call

        samples = time_interleaved(
            {name: inference(fn) for name, fn in functions.items()}, warmup=1, repeats=repeats, sync=sync
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    seconds = {name: summarize(s, per=batch) for name, s in samples.items()}
    matmul_size = 8192 if dev.type == "cuda" else 1024
    matmul = {"float32": matmul_throughput(dev, torch.float32, matmul_size)}
    if low_dtype is not None:
        matmul[dtype_name(low_dtype)] = matmul_throughput(dev, low_dtype, matmul_size)
    ref_time = seconds["reference_fp32"]["median"]
    fast_name = "fused_" + dtype_name(low_dtype) if low_dtype is not None else "fused_fp32"

    def fraction(name: str) -> float:
        dtype = "float32" if name.endswith("fp32") or low_dtype is None else dtype_name(low_dtype)
        return flops / batch / seconds[name]["median"] / matmul[dtype]["flops_per_s"]

    report = {
        "arch": arch,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "image_size": size,
        "weights": f"RANDOM ({fast.cache_key}): timings and equality of formulations only",
        "default_dtype": dtype_name(low_dtype),
        "flops_per_image": flops / batch,
        "checks": checks,
        "seconds_per_image": seconds,
        "speedup_over_reference": {name: ref_time / s["median"] for name, s in seconds.items()},
        "fraction_of_matmul": {name: fraction(name) for name in seconds},
        "sam_fraction_of_matmul": fraction(fast_name),
        "compile_seconds": compile_seconds,
        "matmul": matmul,
        "passed": all(c["passed"] for c in checks.values()),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run the check, write ``sam_check.json`` into ``--out``, print a summary; 1 if a check fails."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arch", default="vit_b")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--fp32-tol", type=float, default=1e-4)
    p.add_argument("--low-tol", type=float, default=0.02)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_sam_check(
        arch=args.arch,
        device=args.device,
        batch=args.batch,
        repeats=args.repeats,
        compile=args.compile,
        fp32_tol=args.fp32_tol,
        low_tol=args.low_tol,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sam_check.json", json.dumps(report, indent=2) + "\n")
    for name, c in report["checks"].items():
        print(f"{'PASS' if c['passed'] else 'FAIL'} {name}: relative L2 {c['rel_l2']:.3g} < {c['tol']:g}")
    for name, s in report["seconds_per_image"].items():
        print(
            f"{name:28s} {s['median'] * 1e3:9.1f} ms/image  x{report['speedup_over_reference'][name]:.2f} "
            f"over reference fp32  {report['fraction_of_matmul'][name]:.3f} of matmul"
        )
    print(f"wrote {out / 'sam_check.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
