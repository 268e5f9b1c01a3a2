#!/usr/bin/env python
"""Download BetaSeg (FIB-SEM mouse beta cells with organelle masks) and write cell specs for ``scsam-prepare``.

    python scripts/download_betaseg.py --info                     # where BetaSeg lives, what it downloads
    python scripts/download_betaseg.py --out data/betaseg_raw     # download, verify, unpack, write specs
    python scripts/download_betaseg.py --out data/betaseg_raw --archive betaseg.zip   # a copy fetched elsewhere

Offline it stops at once with a message and writes nothing. See ``scsam_monai/preparation/betaseg.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from scsam_monai.preparation.betaseg import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
