"""scsam-monai: ScSAM (SAM + MAE feature fusion with a class-prompt encoder) as a MONAI bundle."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
