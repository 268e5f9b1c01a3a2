"""The error every start-up check raises, and the hints of its messages ("did you mean", boolean words as text)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["ConfigValidationError", "boolean_word_hint", "suggest"]


class ConfigValidationError(ValueError):
    """The run's configuration or data cannot work; the message lists every problem found."""


def suggest(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def boolean_word_hint(name: str, value: object) -> str:
    """``" (... write --name True)"`` when ``value`` is the text "true" or "false", else ``""``.

    ``python -m monai.bundle run`` parses its arguments with Fire, which reads ``True`` as a boolean but passes the
    lower-case words ``true`` / ``false`` on as text; a setting that must be a boolean then names the fix.
    """
    if not isinstance(value, str) or value.strip().lower() not in ("true", "false"):
        return ""
    word = value.strip().lower().capitalize()
    return f" (the command line passes the word {value!r} as text: write --{name} {word})"
