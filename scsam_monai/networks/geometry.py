"""Resize-longest-side and pad geometry shared by the encoders, the head and post-processing.

SAM (and our MAE stream) see every image on a square canvas: the image is resized so that its longest side
equals the canvas side, then padded at the bottom and right. :func:`resize_longest_and_pad` does this,
:func:`unpad_and_resize` undoes it for anything computed on a square grid covering the canvas (a 64x64 embedding,
256x256 low-resolution mask logits, a 1024x1024 canvas), like SAM's ``Sam.postprocess_masks``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["longest_side_size", "resize_longest", "pad_to_square", "resize_longest_and_pad", "unpad_and_resize"]

_NEAREST_MODES = ("nearest", "nearest-exact")
_INTERPOLATING_MODES = ("bilinear", "bicubic", "area")


def longest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """Size of an image resized so that its longest side is ``target``.

    Same rule as ``segment_anything.utils.transforms.ResizeLongestSide.get_preprocess_shape``.

    Args:
        height: height of the original image.
        width: width of the original image.
        target: length of the longest side after resizing.

    Returns:
        ``(new_height, new_width)``.
    """
    if height <= 0 or width <= 0 or target <= 0:
        raise ValueError(f"sizes must be positive, got height={height}, width={width}, target={target}.")
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _check_4d(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 4D tensor (B, C, H, W), got {shape}.")


def _resize(x: torch.Tensor, size: tuple[int, int] | None, mode: str, scale: tuple[float, float] | None = None):
    """Interpolate ``x`` (B, C, H, W) to ``size`` (or by ``scale``), keeping integer dtypes for nearest modes."""
    if mode not in _NEAREST_MODES + _INTERPOLATING_MODES:
        raise ValueError(f"unsupported mode {mode!r}, expected one of {_NEAREST_MODES + _INTERPOLATING_MODES}.")
    if size is not None and tuple(x.shape[-2:]) == tuple(size):
        return x
    in_dtype = x.dtype
    is_int = not (x.is_floating_point() or x.is_complex())
    if is_int:
        # nearest copies values: float64 holds every label id exactly; interpolating modes return floats.
        x = x.to(torch.float64 if mode in _NEAREST_MODES else torch.get_default_dtype())
    kwargs: dict = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
        out_h = size[0] if size is not None else math.floor(x.shape[-2] * scale[0])
        out_w = size[1] if size is not None else math.floor(x.shape[-1] * scale[1])
        kwargs["antialias"] = out_h < x.shape[-2] or out_w < x.shape[-1]
    if size is not None:
        y = F.interpolate(x, size=tuple(size), **kwargs)
    else:
        y = F.interpolate(x, scale_factor=scale, recompute_scale_factor=False, **kwargs)
    if is_int and mode in _NEAREST_MODES:
        y = y.round().to(in_dtype)
    return y


def resize_longest(x: torch.Tensor, target: int, *, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``x`` so that its longest side is ``target`` (no padding).

    Args:
        x: images or maps, shape (B, C, H, W).
        target: length of the longest side after resizing.
        mode: interpolation mode: ``"bilinear"`` (antialiased when downsizing, ``align_corners=False``) for
            images and logits, ``"nearest-exact"`` or ``"nearest"`` for label maps (integer dtypes are kept);
            ``"bicubic"`` and ``"area"`` are accepted too. Integer inputs come back as floats for
            interpolating modes.

    Returns:
        Tensor of shape (B, C, h', w') with ``(h', w') = longest_side_size(H, W, target)``.
    """
    _check_4d(x)
    return _resize(x, longest_side_size(int(x.shape[-2]), int(x.shape[-1]), target), mode)


def pad_to_square(x: torch.Tensor, target: int, *, pad_value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` at the bottom and right to a ``target`` x ``target`` square.

    Args:
        x: tensor of shape (B, C, h, w) with ``h, w <= target``.
        target: side of the square output.
        pad_value: value written into the padded region.

    Returns:
        Tensor of shape (B, C, target, target); ``out[..., :h, :w] == x``.
    """
    _check_4d(x)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h > target or w > target:
        raise ValueError(f"cannot pad a {h}x{w} tensor to a smaller {target}x{target} square.")
    if h == target and w == target:
        return x
    return F.pad(x, (0, target - w, 0, target - h), mode="constant", value=pad_value)


def resize_longest_and_pad(
    x: torch.Tensor, target: int, *, mode: str = "bilinear", pad_value: float = 0.0
) -> torch.Tensor:
    """Resize so that the longest side is ``target``, then pad the bottom and right to a square canvas.

    Args:
        x: images or maps, shape (B, C, H, W).
        target: side of the square canvas.
        mode: interpolation mode, see :func:`resize_longest` (``"nearest-exact"`` for label maps).
        pad_value: value written into the padded region.

    Returns:
        Tensor of shape (B, C, target, target) whose top-left ``longest_side_size(H, W, target)`` block holds
        the resized input.
    """
    return pad_to_square(resize_longest(x, target, mode=mode), target, pad_value=pad_value)


def unpad_and_resize(
    x: torch.Tensor,
    input_size: tuple[int, int],
    canvas: int,
    original_size: tuple[int, int],
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Inverse of :func:`resize_longest_and_pad` for a square grid of any resolution covering the canvas.

    ``x`` lives on a ``g`` x ``g`` grid that covers the whole ``canvas`` x ``canvas`` square (``g`` may differ
    from ``canvas``: 256x256 low-resolution logits or a 64x64 embedding for a 1024 canvas). The cells holding the
    resized image (``input_size`` scaled by ``g / canvas``, rounded up) are cropped and resized to
    ``original_size``. When the image border falls inside a cell, the crop is resampled with the exact geometric
    scale (``original / input_size`` times ``canvas / g``) and the overhang trimmed, so that the image content
    stays aligned; otherwise this is a plain resize. With ``g == canvas`` it equals SAM's ``postprocess_masks``
    (up to the antialiasing applied when bilinear resizing shrinks).

    Args:
        x: maps on the square grid, shape (B, C, g, g).
        input_size: ``(h', w')``, size of the resized image on the canvas (see :func:`longest_side_size`).
        canvas: side of the square canvas that the grid covers.
        original_size: ``(H, W)`` of the original image.
        mode: interpolation mode, see :func:`resize_longest` (``"nearest-exact"`` for label maps).

    Returns:
        Tensor of shape (B, C, H, W).
    """
    _check_4d(x)
    g_h, g_w = int(x.shape[-2]), int(x.shape[-1])
    in_h, in_w = (int(v) for v in input_size)
    out_h, out_w = (int(v) for v in original_size)
    if not (0 < in_h <= canvas and 0 < in_w <= canvas):
        raise ValueError(f"input_size {tuple(input_size)} does not fit on a {canvas}x{canvas} canvas.")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"original_size must be positive, got {tuple(original_size)}.")
    # exact rational arithmetic for the crop: cells holding image content, rounded up
    crop_h = min(g_h, -(-in_h * g_h // canvas))
    crop_w = min(g_w, -(-in_w * g_w // canvas))
    cropped = x[..., :crop_h, :crop_w]
    if crop_h * canvas == in_h * g_h and crop_w * canvas == in_w * g_w:
        return _resize(cropped, (out_h, out_w), mode)
    # the crop overhangs the image by a fraction of a cell: resample with the true scale, then trim
    scale = (out_h * canvas / (in_h * g_h), out_w * canvas / (in_w * g_w))
    y = _resize(cropped, None, mode, scale=scale)
    if y.shape[-2] < out_h or y.shape[-1] < out_w:  # floating point guard; cannot happen with exact sizes
        y = F.pad(y, (0, max(0, out_w - y.shape[-1]), 0, max(0, out_h - y.shape[-2])), mode="replicate")
    return y[..., :out_h, :out_w]
