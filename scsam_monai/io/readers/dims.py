"""From a source's dimensions to ``(Z, Y, X)``: which dimension is which, and read functions over them.

:func:`plan_dims` decides, from a shape (and axis names where the format has them), which source dimension is
Z, Y and X, and refuses what is not one single-channel 2D image or 3D stack; :func:`mapped_reader` reads
``(z, y, x)`` indices through that plan, and :func:`cached_whole` serves every index from one whole read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scsam_monai.io.readers.volume import DataPreparationError, Index

__all__ = ["plan_dims", "mapped_reader", "cached_whole"]


def plan_dims(shape: Sequence[int], source: str, names: Sequence[str] | None = None) -> tuple[list, tuple]:
    """Map a source shape onto ``(Z, Y, X)``: Y and X are the last two dims (after a trailing singleton channel
    or sample axis), and every other singleton dim is dropped.

    Returns ``(plan, shape3)``; ``plan`` has, per source dim, ``0`` (dropped) or ``"z"``/``"y"``/``"x"``.
    """
    full = tuple(int(s) for s in shape)
    names = [n.lower() for n in names] if names is not None else [""] * len(full)
    shape, trailing = full, 0
    while len(shape) > 2 and names[len(shape) - 1] in ("s", "c"):  # trailing samples (RGB) or channel axis
        if shape[-1] != 1:
            raise DataPreparationError(
                f"{source}: has {shape[-1]} channels (shape {full}); EM data must be single-channel."
            )
        shape, trailing = shape[:-1], trailing + 1
    if len(shape) < 2:
        raise DataPreparationError(f"{source}: expected a 2D image or a 3D stack, got shape {full}.")
    lead = [i for i in range(len(shape) - 2) if shape[i] != 1]
    for i in lead:
        if names[i] in ("c", "s", "channel"):
            hint = " (a 3- or 4-slice stack saved as planar RGB? save it with photometric='minisblack')"
            raise DataPreparationError(
                f"{source}: has {shape[i]} channels (shape {full}); EM data must be single-channel"
                + (hint if names[i] == "s" else "")
                + "."
            )
    if len(lead) > 1:
        raise DataPreparationError(
            f"{source}: has {len(lead)} non-singleton dimensions besides Y and X (shape {full}); "
            "expected one 2D image or one 3D stack."
        )
    plan: list = [0] * (len(shape) - 2) + ["y", "x"] + [0] * trailing
    if lead:
        plan[lead[0]] = "z"
    return plan, (shape[lead[0]] if lead else 1, shape[-2], shape[-1])


def mapped_reader(get: Callable[[tuple], np.ndarray], plan: list) -> Callable[[Index], np.ndarray]:
    """Read ``(z, y, x)`` indices from a source whose dims follow ``plan``."""
    has_z = "z" in plan

    def read(index: Index) -> np.ndarray:
        z, y, x = index
        full = tuple({"z": z, "y": y, "x": x}.get(p, 0) if isinstance(p, str) else 0 for p in plan)
        if not has_z:
            if isinstance(z, slice):
                return np.asarray(get(full))[None][z]
            if z != 0:
                raise IndexError(f"slice {z} of a 2D image")
        return np.asarray(get(full))

    return read


def cached_whole(load: Callable[[], np.ndarray]) -> Callable[[Index], np.ndarray]:
    """Serve every ``(z, y, x)`` index from one read of the whole array by ``load`` (made at the first read)."""
    cache: dict[str, np.ndarray] = {}

    def read(index: Index) -> np.ndarray:
        if "a" not in cache:
            cache["a"] = load()
        return cache["a"][index]

    return read
