#!/usr/bin/env python
"""Prepare labelled EM volumes for ScSAM: the ``scsam-prepare`` command (``scsam_monai.cli.prepare``).

Run ``python scripts/prepare_data.py --help`` for the options; ``docs/own_data.md`` walks through examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from scsam_monai.cli.prepare import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
