"""Performance benchmark of ScSAM: where inference and training spend their time, as ratios measured in one run.

``python scripts/benchmark.py --profile {tiny,full} --out DIR`` (see :mod:`.cli`, and :func:`.run.run_benchmark`)
writes ``benchmark.json`` and ``benchmark.md``: seconds per image of the encoders, the head and the full model; head
training throughput; embedding-cache reads and volume-inference memory; matmul throughput; whole volumes; MAE
pre-training throughput; and, when named, whole datasets (:mod:`.whole_dataset`). ``benchmarks/README.md`` explains
the figures and records results. The package imports only the profiles and the report's keys, so that
``python -m benchmarks.whole_dataset`` and the other sections run as modules without importing each other.
"""

from __future__ import annotations

from benchmarks.profiles import PROFILES, BenchmarkProfile, get_profile
from benchmarks.report import RATIO_KEYS, TARGETS

__all__ = ["PROFILES", "BenchmarkProfile", "get_profile", "RATIO_KEYS", "TARGETS"]
