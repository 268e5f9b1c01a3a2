"""Command-line entry points of scsam-monai (console scripts and ``python -m`` modules)."""
