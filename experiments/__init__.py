"""Experiments: ScSAM, its variants and ablations, supervised and zero-shot baselines, on one datalist.

``scripts/run_experiments.py`` (see ``experiments/README.md``) runs them and writes the paper's tables and figures.
"""

from __future__ import annotations

from experiments.registry import GROUPS, METHODS, Method, select_methods

__all__ = ["GROUPS", "METHODS", "Method", "select_methods"]
