#!/usr/bin/env python
"""Baselines, ablations and the paper's tables with one command (see docs/experiments.md).

python scripts/run_experiments.py --profile tiny --out outputs/experiments
python scripts/run_experiments.py --datalist data/betaseg/datalist.json --profile full --out outputs/paper
"""

from __future__ import annotations

import sys

from scsam_monai.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
