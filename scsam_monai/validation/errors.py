"""The error every start-up check raises, and the "did you mean" hint of its messages."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["ConfigValidationError", "suggest"]


class ConfigValidationError(ValueError):
    """The run's configuration or data cannot work; the message lists every problem found."""


def suggest(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""
