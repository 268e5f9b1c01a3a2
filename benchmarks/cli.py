"""Command line of the benchmark (``scripts/benchmark.py``)."""

from __future__ import annotations

import argparse
import logging
import sys

from benchmarks.profiles import PROFILES, get_profile
from benchmarks.report import RATIO_KEYS
from benchmarks.run import EXTRA_SECTIONS, SECTIONS, run_benchmark
from scsam_monai.networks.precision import PRECISIONS
from scsam_monai.networks.sam_attention import SAM_ATTENTION_KINDS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scripts/benchmark.py``."""
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Time ScSAM's encoders, head, full model, head training, cache reads and volume-inference memory; "
        "write benchmark.json and benchmark.md (ratios measured in one run).",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny", help="sizes and counts (default: tiny)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16/fp16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="also time torch.compile-d encoders and head")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="skip the channels-last head")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS + EXTRA_SECTIONS)} (default: all but "
        f"{','.join(EXTRA_SECTIONS)})",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--sam-precision",
        choices=PRECISIONS,
        default="auto",
        help="SAM encoder precision (default auto: bf16 on GPUs and on CPUs with native bf16, else fp32)",
    )
    p.add_argument(
        "--sam-attention",
        choices=SAM_ATTENTION_KINDS,
        default="fused",
        help="SAM encoder attention: fused (scaled_dot_product_attention) or segment-anything's reference",
    )
    p.add_argument("--sam-checkpoint", help="SAM checkpoint (default: random weights)")
    p.add_argument("--mae-checkpoint", help="MAE checkpoint (default: random weights)")
    g = p.add_argument_group("profile overrides")
    g.add_argument("--repeats", type=int)
    g.add_argument("--warmup", type=int)
    g.add_argument("--infer-batch", type=int, help="images per inference call (CPU and GPU)")
    g.add_argument("--train-batch", type=int)
    g.add_argument("--train-repeats", type=int)
    g.add_argument(
        "--memory-slices",
        type=int,
        help="N: memory and the volume pipeline on N and 10 N slices (default: the profile's, per device)",
    )
    g.add_argument("--cache-images", type=int)
    g.add_argument("--cache-workers", type=int, help="DataLoader workers reading the embedding cache")
    p.add_argument("--memory-timeout", type=float, help="seconds before the memory child process is stopped")
    w = p.add_argument_group("whole_dataset section (benchmarks/whole_dataset.py)")
    w.add_argument("--quick", action="store_true", help="smoke sizes (seconds; the numbers mean nothing)")
    w.add_argument("--largest", action="store_true", help="peak RSS also at a 16384^2 slice (half an hour, 2 CPUs)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; print the ratios."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    profile = get_profile(args.profile).with_overrides(
        repeats=args.repeats,
        warmup=args.warmup,
        infer_batch=args.infer_batch,
        infer_batch_cuda=args.infer_batch,
        train_batch=args.train_batch,
        train_repeats=args.train_repeats,
        memory_slices=args.memory_slices,
        memory_slices_cpu=args.memory_slices,
        cache_images=args.cache_images,
        cache_workers=args.cache_workers,
    )
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    report = run_benchmark(
        profile,
        args.out,
        device=args.device,
        amp=args.amp,
        sections=sections,
        sam_checkpoint=args.sam_checkpoint,
        mae_checkpoint=args.mae_checkpoint,
        compile=args.compile,
        channels_last=args.channels_last,
        threads=args.threads,
        memory_timeout=args.memory_timeout,
        sam_precision=args.sam_precision,
        sam_attention=args.sam_attention,
        whole_dataset_quick=args.quick,
        whole_dataset_largest=args.largest,
    )
    for key in RATIO_KEYS:
        value = report["ratios"][key]
        target = report["targets"].get(key)
        met = (
            ""
            if target is None or target["met"] is None
            else f"  target {target['target']}: " + ("met" if target["met"] else "NOT met")
        )
        print(f"{key:32s} {'n/a' if value is None else f'{value:.4g}'}{met}")
    for key, value in (report.get("whole_dataset") or {}).get("ratios", {}).items():
        print(f"{key:32s} {'n/a' if value is None else f'{value:.4g}'}")
    print(f"wrote {args.out}/benchmark.json and {args.out}/benchmark.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
