"""Benchmark profiles: which encoders, how many images, repeats and slices each section of the speed benchmark uses.

Not the experiment runner's profiles (``experiments.runner.ExperimentProfile``: data, training budget and rows of
the accuracy experiments); the two share only the names "tiny" and "full".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["BenchmarkProfile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class BenchmarkProfile:
    """Sizes and counts of one benchmark run.

    Args:
        name: profile name, written into the report.
        sam_arch: SAM encoder architecture (``FrozenSamEncoder``'s ``arch``).
        mae_arch: MAE encoder architecture (``FrozenMaeEncoder``'s ``arch``).
        image_size: side of the square test images (the encoders' canvas: no resize).
        infer_batch: images per inference call on CPU (section 1, volume inference).
        infer_batch_cuda: images per inference call on a GPU.
        warmup: untimed calls of each measured function before timing.
        repeats: timed calls of each measured function (the median and the spread are reported).
        train_batch: images per training step (section 2).
        train_warmup: untimed training steps of each variant.
        train_repeats: timed training steps of each variant.
        naive_per_prompt: also time the loop of one decoder call per (image, class) prompt.
        cache_images: images written to (and read back from) the temporary embedding cache.
        cache_workers: DataLoader worker processes reading the cache.
        memory_slices: N on a GPU: peak memory and the whole-volume pipeline are measured on stacks of N and 10 N
            slices of streaming inference.
        memory_slices_cpu: N on a CPU (1 and 10 slices; 100 and 1000 ViT-B slices take hours there).
        matmul_size: side of the square matrices of the matmul throughput test on CPU.
        matmul_size_cuda: the same on a GPU.
    """

    name: str
    sam_arch: str
    mae_arch: str
    image_size: int
    infer_batch: int
    infer_batch_cuda: int
    warmup: int
    repeats: int
    train_batch: int
    train_warmup: int
    train_repeats: int
    naive_per_prompt: bool
    cache_images: int
    cache_workers: int
    memory_slices: int
    memory_slices_cpu: int
    matmul_size: int
    matmul_size_cuda: int

    def to_dict(self) -> dict:
        """The profile as a plain dict (for the JSON report)."""
        return asdict(self)

    def with_overrides(self, **overrides) -> BenchmarkProfile:
        """A copy with the fields given (None values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: "tiny": the tiny encoders (random weights) and the real-size head (64x64 grid), few repeats and slices; a smoke
#: run of every section in about a minute on 2 CPU cores (the test runs it). Its encoder-relative ratios say
#: nothing about the real model: the tiny encoders cost about 3% of the real ones, the head is the real head.
#: "full": SAM vit_b and the paper's MAE (512 wide) on a 1024 canvas, batch 32 for training, memory and the volume
#: pipeline at 100 and 1000 slices on a GPU, 1 and 10 on a CPU. Minutes on a GPU; on 2 CPU cores the inference
#: section takes minutes, training hours (see benchmarks/README.md).
PROFILES: dict[str, BenchmarkProfile] = {
    "tiny": BenchmarkProfile(
        name="tiny",
        sam_arch="tiny",
        mae_arch="tiny",
        image_size=256,
        infer_batch=1,
        infer_batch_cuda=4,
        warmup=1,
        repeats=3,
        train_batch=2,
        train_warmup=1,
        train_repeats=2,
        naive_per_prompt=False,
        cache_images=8,
        cache_workers=0,
        memory_slices=1,
        memory_slices_cpu=1,
        matmul_size=1024,
        matmul_size_cuda=4096,
    ),
    "full": BenchmarkProfile(
        name="full",
        sam_arch="vit_b",
        mae_arch="mae_vit_512",
        image_size=1024,
        infer_batch=1,
        infer_batch_cuda=8,
        warmup=1,
        repeats=5,
        train_batch=32,
        train_warmup=1,
        train_repeats=3,
        naive_per_prompt=True,
        cache_images=64,
        cache_workers=2,
        memory_slices=100,
        memory_slices_cpu=1,
        matmul_size=2048,
        matmul_size_cuda=8192,
    ),
}


def get_profile(name: str) -> BenchmarkProfile:
    """The profile called ``name`` (``"tiny"`` or ``"full"``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown benchmark profile {name!r}, expected one of {sorted(PROFILES)}.")
    return PROFILES[name]
