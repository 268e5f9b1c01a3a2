"""Compute precision of the frozen encoders: which autocast dtype a device runs them in, and its context.

A frozen encoder's embeddings are consumed by a head that was trained on embeddings of the same function, so a
lower-precision matmul is acceptable where the hardware executes it natively: bfloat16 on CUDA GPUs that support it
(Ampere and later) and on CPUs with bf16 dot-product instructions (AVX512-BF16) or matrix tiles (AMX). CPUs without
them only emulate bf16 (slower than float32), so ``"auto"`` keeps float32 there.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from functools import lru_cache

import torch

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "resolve_precision", "precision_context", "dtype_name"]

#: Accepted values of an encoder's ``precision``: ``"auto"`` (bf16 where the device runs it natively, else fp16 on
#: older GPUs and fp32 on CPUs), or an explicit ``"bf16"``, ``"fp16"`` or ``"fp32"`` (no autocast at all).
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 matmuls natively (AVX512-BF16 or AMX), as oneDNN's bf16 kernels need."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # a probe that the build lacks
            continue
    return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for float32 (no autocast).

    Args:
        precision: one of :data:`PRECISIONS`.
        device: where the encoder runs (its type decides ``"auto"``).

    Raises:
        ValueError: an unknown precision, or fp16 asked for on a CPU (not supported by CPU autocast kernels here).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}, expected one of {PRECISIONS}.")
    device_type = torch.device(device).type
    if precision == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device_type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("precision 'fp16' is not supported on CPU; use 'bf16' or 'fp32'.")
    if precision == "bf16" and device_type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return _DTYPES[precision]


@lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:
    """Say once a process that explicit bf16 on this CPU is emulated: it runs, many times slower than float32."""
    logger.warning(
        "precision 'bf16' on a CPU without native bf16 instructions (AVX512-BF16 or AMX): PyTorch emulates it, "
        "many times slower than float32; 'auto' or 'fp32' runs float32 here."
    )


def precision_context(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; for None, autocast switched OFF (float32 even inside an outer autocast).

    Args:
        device: where the computation runs.
        dtype: the autocast dtype from :func:`resolve_precision`, or None for float32.
    """
    device_type = torch.device(device).type
    if dtype is None:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype)


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"bfloat16"``, ``"float16"`` ... for a dtype; ``"float32"`` for None (no autocast)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")
