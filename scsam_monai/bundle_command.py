"""The ``python -m monai.bundle run ...`` command line of this bundle, built in one place.

The MONAI Label training task, the experiment runner's "rerun this row" commands and the end-to-end tests
all start bundle runs as child processes, exactly as a user types them; this builds that command.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_DIR", "CONFIGS_DIR", "bundle_command"]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundle"
"""The repository's ``bundle/`` beside the package (an editable install or a checkout)."""
CONFIGS_DIR = BUNDLE_DIR / "configs"
"""The repository's ``bundle/configs``."""


def bundle_command(
    run_id: str,
    config_files: Sequence[str | Path],
    *,
    overrides: Mapping[str, Any] | None = None,
    configs_dir: str | Path | None = None,
    meta_file: str | Path | None = None,
    logging_file: str | Path | None = None,
    python: str = sys.executable,
) -> list[str]:
    """``[python, -m, monai.bundle, run, run_id, --meta_file ..., --logging_file ..., --config_file [...], ...]``.

    Args:
        run_id: the workflow id (``training``, ``evaluating``, ``inference``, ...).
        config_files: config files in order; bare names are taken from ``configs_dir``.
        overrides: ids and values appended as ``--id value`` (``str(value)``).
        configs_dir: folder of the bundle's configs (default: this repository's ``bundle/configs``).
        meta_file: ``metadata.json`` (default: the one in ``configs_dir``).
        logging_file: ``logging.conf`` (default: the one in ``configs_dir``).
        python: the interpreter.
    """
    folder = Path(configs_dir) if configs_dir is not None else CONFIGS_DIR
    files = [str(folder / c) if Path(c).name == str(c) else str(c) for c in config_files]
    cmd = [python, "-m", "monai.bundle", "run", run_id]
    cmd += ["--meta_file", str(meta_file or folder / "metadata.json")]
    cmd += ["--logging_file", str(logging_file or folder / "logging.conf")]
    cmd += ["--config_file", "[" + ",".join(repr(f) for f in files) + "]"]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", str(value)]
    return cmd
