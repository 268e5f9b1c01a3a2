"""Benchmark ScSAM: ``python scripts/benchmark.py --profile {tiny,full} --out DIR`` (see docs/performance.md)."""

from __future__ import annotations

import sys

from scsam_monai.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
