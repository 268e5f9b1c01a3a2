#!/usr/bin/env python
"""Baselines, ablations and the paper's tables with one command (see experiments/README.md).

python scripts/run_experiments.py --profile tiny --out outputs/experiments
python scripts/run_experiments.py --datalist data/betaseg/datalist.json --profile full --out outputs/paper
"""

from __future__ import annotations

import sys
from pathlib import Path

# the bench lives beside the package in the repository, not installed: import it from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
