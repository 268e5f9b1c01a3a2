"""Experiments: ScSAM, its variants and ablations, supervised and zero-shot baselines, on one datalist.

``scripts/run_experiments.py`` (see ``docs/experiments.md``) runs them and writes the paper's tables and figures.
"""

from __future__ import annotations

from .planning import plan_dynunet
from .registry import GROUPS, METHODS, Method, select_methods

__all__ = ["GROUPS", "METHODS", "Method", "plan_dynunet", "select_methods"]
