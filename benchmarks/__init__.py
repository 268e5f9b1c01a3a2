"""Performance benchmark of ScSAM: where inference and training spend their time, as ratios measured in one run.

``python scripts/benchmark.py --profile {tiny,full} --out DIR`` (see :mod:`.cli`) writes ``benchmark.json`` and
``benchmark.md`` with four sections: (1) seconds per image of the SAM encoder, the MAE encoder, the head and the
full model; (2) head training throughput, batched against per-class decoder loops; (3) embedding-cache read
throughput and volume-inference memory at N and 10 N slices; (4) the machine's matmul throughput and the
encoders' achieved fraction of it. ``benchmarks/README.md`` explains the figures and records results.
"""

from __future__ import annotations

from benchmarks.profiles import PROFILES, BenchmarkProfile, get_profile
from benchmarks.report import RATIO_KEYS, TARGETS
from benchmarks.run import SECTIONS, run_benchmark

__all__ = ["PROFILES", "BenchmarkProfile", "get_profile", "RATIO_KEYS", "TARGETS", "SECTIONS", "run_benchmark"]
