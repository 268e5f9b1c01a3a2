"""Benchmark ScSAM: ``python scripts/benchmark.py --profile {tiny,full} --out DIR`` (see benchmarks/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

# the bench lives beside the package in the repository, not installed: import it from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
