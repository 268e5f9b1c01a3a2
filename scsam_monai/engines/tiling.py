"""Segment one 2D slice at the model's pixel size: resampled, cut into overlapping tiles, in bounded memory.

ScSAM sees a square canvas (1024 pixels for SAM ViT-B). A slice much larger than the canvas, squeezed onto it,
loses the fine structure the model learnt at its own pixel size. :func:`segment_tiled` instead resamples the slice
by ``scale`` (input pixel size / model pixel size) and, when the resampled slice is larger than the canvas,
segments it in overlapping canvas-sized tiles whose class logits are blended with Gaussian weights (tile borders,
where the model sees least context, count least), then brings the logits back to the input grid and merges them
into a label map exactly as :func:`~scsam_monai.engines.volume_inference.segment_slices` does.

Tile placement and weights are those of MONAI's ``SlidingWindowInferer(mode="gaussian")``, but memory is not: MONAI
keeps float32 sums for the whole slice (4 GiB for a 16,384² slice with 3 classes). Here the slice is processed in
bands of one tile row: weighted sums are kept only for the rows the current tile row touches, and rows are finished
(resampled back, merged into labels) as soon as no later tile touches them. The input is read, normalised
(``normalize``) and resampled band by band too, so beside the ``(H, W)`` label map (and the probabilities, when
asked for) the extra memory is ``O(C * tile * W)`` float32, whatever the height of the slice.

Example::

    from scsam_monai.engines.tiling import Tiling, segment_tiled

    labels, _ = segment_tiled(model, image, tiling=Tiling(tile_size=1024), scale=0.5, device="cuda")
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices

from scsam_monai.data.transforms import merge_class_logits

__all__ = ["Tiling", "needs_tiling", "resampled_shape", "segment_tiled"]

_UNIT_SCALE_TOLERANCE = 1e-9

Model = Callable[[torch.Tensor], torch.Tensor]


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number (input / model pixel size), got {scale!r}.")
    return float(scale)


@dataclass(frozen=True)
class Tiling:
    """How a slice larger than the model's canvas is cut into tiles and blended back.

    Args:
        tile_size: side of a square tile: the model's canvas, so that the model does not rescale the tiles.
        overlap: fraction of a tile shared with its neighbour, in [0, 1) (MONAI's sliding-window ``overlap``).
        sigma_scale: sigma of the Gaussian blending weights as a fraction of the tile (MONAI's default 0.125).
        batch_size: tiles per model call (tiles of one tile row only, so that results never depend on it).
    """

    tile_size: int
    overlap: float = 0.5
    sigma_scale: float = 0.125
    batch_size: int = 4

    def __post_init__(self) -> None:
        _check_positive_int(self.tile_size, "tile_size")
        _check_positive_int(self.batch_size, "batch_size")
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < 1:
            raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}.")
        sigma = self.sigma_scale
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma_scale must be a positive finite number, got {sigma!r}.")

    @property
    def step(self) -> int:
        """Distance between neighbouring tiles (MONAI's scan interval): ``int(tile_size * (1 - overlap))``, >= 1."""
        return max(1, int(self.tile_size * (1 - self.overlap)))

    def as_dict(self) -> dict:
        """JSON-able record of the tiling (written beside predictions and compared when a run resumes)."""
        return {
            "tile_size": int(self.tile_size),
            "overlap": float(self.overlap),
            "sigma_scale": float(self.sigma_scale),
            "batch_size": int(self.batch_size),
        }


def resampled_shape(shape_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Size ``(round(H * scale), round(W * scale))`` (at least 1) of a slice resampled to the model's pixel size.

    Args:
        shape_hw: ``(H, W)`` of the slice on the input grid.
        scale: input pixel size / model pixel size (2.0: the model's pixels are half as big, the slice doubles).
    """
    scale = _check_scale(scale)
    if len(shape_hw) != 2:
        raise ValueError(f"shape_hw must be (H, W), got {tuple(shape_hw)}.")
    for side in shape_hw:
        _check_positive_int(side, "shape_hw")
    if abs(scale - 1.0) <= _UNIT_SCALE_TOLERANCE:
        return int(shape_hw[0]), int(shape_hw[1])
    return max(1, round(shape_hw[0] * scale)), max(1, round(shape_hw[1] * scale))


def needs_tiling(shape_hw: tuple[int, int], scale: float, tile_size: int) -> bool:
    """Whether a slice resampled by ``scale`` is larger than one ``tile_size`` tile in either dimension.

    Args:
        shape_hw: ``(H, W)`` of the slice on the input grid.
        scale: input pixel size / model pixel size.
        tile_size: side of a tile (the model's canvas).
    """
    _check_positive_int(tile_size, "tile_size")
    return max(resampled_shape(shape_hw, scale)) > tile_size


def _axis_tiles(length: int, tile: int, overlap: float) -> tuple[int, list[int]]:
    """Tile size and tile starts along one axis, placed as MONAI's sliding window places them.

    The tile is ``min(tile, length)`` (no padding: the model takes any size); the scan interval is
    ``monai.inferers.utils._get_scan_interval``'s and the starts ``dense_patch_slices``' (the last tile ends at the
    end of the axis).
    """
    size = min(tile, length)
    interval = size if size == length else max(1, int(size * (1 - overlap)))
    return size, [int(s[0].start) for s in dense_patch_slices((length,), (size,), (interval,))]


def _linear_taps(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights ``(out_size, k)`` of bilinear resampling along one axis.

    The rule of ``F.interpolate(mode="bilinear", align_corners=False)`` (output ``i`` samples source
    ``(i + 0.5) * in / out - 0.5``), with ``antialias`` and shrinking its triangle filter widened by the shrink
    factor, so that resampling band by band equals resampling a whole slice. Unused taps have weight 0 and repeat
    the last used index, so that the indices are non-decreasing in ``i``.
    """
    ratio = in_size / out_size
    out = np.arange(out_size, dtype=np.float64)
    if antialias and ratio > 1:
        center = ratio * (out + 0.5)
        first = np.maximum(np.trunc(center - ratio + 0.5), 0).astype(np.int64)
        stop = np.minimum(np.trunc(center + ratio + 0.5).astype(np.int64), in_size)
        index = first[:, None] + np.arange(int((stop - first).max()))
        weight = np.clip(1 - np.abs((index - center[:, None] + 0.5) / ratio), 0, None)
        weight[index >= stop[:, None]] = 0
        weight /= weight.sum(axis=1, keepdims=True)
        index = np.minimum(index, stop[:, None] - 1)
    else:
        source = np.maximum((out + 0.5) * ratio - 0.5, 0)
        low = np.minimum(np.floor(source), in_size - 1).astype(np.int64)
        fraction = np.clip(source - low, 0, 1)
        index = np.stack([low, np.minimum(low + 1, in_size - 1)], axis=1)
        weight = np.stack([1 - fraction, fraction], axis=1)
    return index, weight.astype(np.float32)


def _combine_rows(source: torch.Tensor, index: np.ndarray, weight: np.ndarray, first: int) -> torch.Tensor:
    """Rows ``sum_k weight[:, k] * source[..., index[:, k] - first, :]`` of ``source`` ``(..., rows, W)``."""
    index_t = torch.as_tensor(index - first, device=source.device)
    weight_t = torch.as_tensor(weight, device=source.device)
    out = None
    for k in range(index.shape[1]):
        term = source.index_select(-2, index_t[:, k]) * weight_t[:, k, None]
        out = term if out is None else out.add_(term)
    return out


def _resize_width(rows: torch.Tensor, width: int, antialias: bool) -> torch.Tensor:
    """``rows`` ``(..., n, w)`` resampled to ``(..., n, width)`` (bilinear, ``align_corners=False``)."""
    if rows.shape[-1] == width:
        return rows
    lead = rows.shape[:-2]
    flat = rows.reshape(1, -1, *rows.shape[-2:])
    out = F.interpolate(flat, size=(rows.shape[-2], width), mode="bilinear", align_corners=False, antialias=antialias)
    return out.reshape(*lead, rows.shape[-2], width)


def _as_2d_image(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be a non-empty 2D slice (H, W), got shape {tuple(image.shape)}.")
    return image


class _ModelGridRows:
    """Rows of the slice on the model's grid, resampled on demand so that the resampled slice never exists whole.

    Bilinear (antialiased when shrinking), as ``F.interpolate`` of the whole slice would resample it. ``normalize``
    (elementwise) is applied to each band of input rows as it is read.
    """

    def __init__(
        self,
        image: np.ndarray | torch.Tensor,
        shape: tuple[int, int],
        device: torch.device,
        normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.image, self.shape, self.device, self.normalize = image, shape, device, normalize
        height, width = image.shape
        self.resampled = shape != (height, width)
        self.antialias = shape[0] < height or shape[1] < width
        if self.resampled:
            self.index, self.weight = _linear_taps(height, shape[0], self.antialias)

    def _source(self, start: int, stop: int) -> torch.Tensor:
        part = self.image[start:stop]
        if self.normalize is not None:  # a new float32 band: no second copy
            raw = part.numpy(force=True) if isinstance(part, torch.Tensor) else np.asarray(part)
            return torch.as_tensor(np.asarray(self.normalize(raw), dtype=np.float32), device=self.device)
        if isinstance(part, torch.Tensor):
            return part.to(device=self.device, dtype=torch.float32)
        return torch.from_numpy(np.array(part, dtype=np.float32)).to(self.device)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of the resampled slice, ``(stop - start, w)`` float32 on the device."""
        if not self.resampled:
            return self._source(start, stop)
        index, weight = self.index[start:stop], self.weight[start:stop]
        first = int(index.min())
        rows = _combine_rows(self._source(first, int(index.max()) + 1), index, weight, first)
        return _resize_width(rows, self.shape[1], self.antialias)


class _RowResampler:
    """Bilinear resampling of a map arriving in consecutive row bands, keeping only the halo rows between bands.

    Output row ``y`` samples source row ``(y + 0.5) * h / H - 0.5`` (``F.interpolate(mode="bilinear",
    align_corners=False)`` of the whole map); rows are emitted as soon as the source rows they need have arrived.
    """

    def __init__(self, source_height: int, height: int, width: int) -> None:
        self.index, self.weight = _linear_taps(source_height, height, antialias=False)
        self.last_needed = self.index.max(axis=1)
        self.width = width
        self.carry: torch.Tensor | None = None
        self.carry_top = 0
        self.next_row = 0
        self.max_carry_rows = 0

    def push(self, top: int, band: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Take source rows ``[top, top + n)`` of ``band`` ``(C, n, w)``; yield ``(first row, (C, m, W))`` outputs."""
        band = _resize_width(band, self.width, antialias=False)
        if self.carry is None or self.carry.shape[-2] == 0:
            self.carry, self.carry_top = band, top
        else:
            if top != self.carry_top + self.carry.shape[-2]:
                raise RuntimeError(f"row bands out of order: got row {top} after {self.carry_top}.")
            self.carry = torch.cat([self.carry, band], dim=-2)
        self.max_carry_rows = max(self.max_carry_rows, self.carry.shape[-2])
        available = self.carry_top + self.carry.shape[-2]
        stop = int(np.searchsorted(self.last_needed, available, side="left"))
        if stop > self.next_row:
            rows = slice(self.next_row, stop)
            yield self.next_row, _combine_rows(self.carry, self.index[rows], self.weight[rows], self.carry_top)
            self.next_row = stop
        keep_from = int(self.index[self.next_row].min()) if self.next_row < len(self.index) else available
        self.carry = self.carry[..., keep_from - self.carry_top :, :]
        self.carry_top = keep_from


def _check_logits(logits: object, tiles: torch.Tensor) -> torch.Tensor:
    b, _, h, w = tiles.shape
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[0] != b or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (b, 1 + C, h, w) logits for {tuple(tiles.shape)} tiles, got {shape}.")
    if tuple(logits.shape[-2:]) != (h, w):
        raise ValueError(f"the model returned {tuple(logits.shape)} logits for {tuple(tiles.shape)} tiles.")
    return logits


def _blended_bands(
    model: Model,
    rows: _ModelGridRows,
    tiling: Tiling,
    autocast: contextlib.AbstractContextManager,
    probe: dict | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Gaussian-blended class logits on the model's grid, one band of finished rows at a time: ``(top, (C, n, w))``.

    Tile row ``i`` covers rows ``[r_i, r_i + tile)``; after it, rows before ``r_{i+1}`` are touched by no later tile,
    so they are divided by their weight sum and emitted, and the sums of the rows after them move to the top of the
    buffer. The buffer is one tile high.
    """
    height, width = rows.shape
    device = rows.device
    tile_h, row_starts = _axis_tiles(height, tiling.tile_size, tiling.overlap)
    tile_w, col_starts = _axis_tiles(width, tiling.tile_size, tiling.overlap)
    if len(row_starts) == 1 and len(col_starts) == 1:  # the whole slice in one call: its logits unchanged
        weight = torch.ones((tile_h, tile_w), device=device)
    else:
        weight = compute_importance_map(
            (tile_h, tile_w), mode="gaussian", sigma_scale=tiling.sigma_scale, device=device, dtype=torch.float32
        )
    sums: torch.Tensor | None = None
    weight_sums = torch.zeros((tile_h, width), dtype=torch.float32, device=device)
    for i, top in enumerate(row_starts):
        band = rows(top, top + tile_h)
        for first in range(0, len(col_starts), tiling.batch_size):
            cols = col_starts[first : first + tiling.batch_size]
            tiles = torch.stack([band[:, c : c + tile_w] for c in cols])[:, None]
            with autocast:
                logits = _check_logits(model(tiles), tiles)
            classes = logits[:, 1:].float()  # channel 0 is the model's background
            if sums is None:
                sums = torch.zeros((classes.shape[1], tile_h, width), dtype=torch.float32, device=device)
            for tile, c in zip(classes, cols, strict=True):
                sums[:, :, c : c + tile_w] += tile * weight
                weight_sums[:, c : c + tile_w] += weight
            del tiles, logits, classes
        if probe is not None:
            probe["buffer_rows"] = max(probe.get("buffer_rows", 0), sums.shape[1], weight_sums.shape[0])
        done = row_starts[i + 1] - top if i + 1 < len(row_starts) else tile_h
        yield top, sums[:, :done] / weight_sums[:done]
        keep = tile_h - done
        sums[:, :keep] = sums[:, done:].clone()
        sums[:, keep:] = 0
        weight_sums[:keep] = weight_sums[done:].clone()
        weight_sums[keep:] = 0


def _class_logit_bands(
    model: Model,
    image: np.ndarray | torch.Tensor,
    *,
    tiling: Tiling,
    scale: float = 1.0,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    probe: dict | None = None,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended class logits on the input grid, in consecutive row bands ``(first row, (C, n, W))`` on ``device``.

    ``probe``, when given, receives the most rows its buffers ever held: ``buffer_rows`` (the blending sums, model
    grid) and ``carry_rows`` (the resampler's halo plus the band being resampled, model grid).
    """
    if not isinstance(tiling, Tiling):
        raise ValueError(f"tiling must be a Tiling, got {type(tiling).__name__}.")
    image = _as_2d_image(image)
    height, width = (int(v) for v in image.shape)
    shape = resampled_shape((height, width), scale)
    rows = _ModelGridRows(image, shape, torch.device(device), normalize)
    bands = _blended_bands(model, rows, tiling, autocast or contextlib.nullcontext(), probe)
    if shape == (height, width):
        yield from bands
        return
    resampler = _RowResampler(shape[0], height, width)
    for top, band in bands:
        yield from resampler.push(top, band)
        if probe is not None:
            probe["carry_rows"] = max(probe.get("carry_rows", 0), resampler.max_carry_rows)
    if resampler.next_row != height:
        raise RuntimeError(f"resampling stopped at row {resampler.next_row} of {height}.")


def segment_tiled(
    model: Model,
    image: np.ndarray | torch.Tensor,
    *,
    tiling: Tiling,
    scale: float = 1.0,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    threshold: float = 0.5,
    probabilities: bool = False,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment one slice at the model's pixel size, in overlapping tiles when it is larger than the canvas.

    The slice is resampled by ``scale`` (bilinear, antialiased when shrinking; not at all when ``scale`` is 1),
    cut into ``tiling.tile_size`` tiles placed as MONAI's sliding window places them, and the tiles' class logits
    are blended with Gaussian weights, resampled back to the input grid and merged into labels with
    :func:`~scsam_monai.data.transforms.merge_class_logits`, a band of rows at a time (see the module's docstring).
    A slice that fits in one tile is one model call on the whole resampled slice, so any slice can go through here.

    Args:
        model: ``(b, 1, h, w)`` float32 in [0, 1] -> ``(b, 1 + C, h, w)`` logits, channel 0 the background (a
            :class:`~scsam_monai.networks.scsam.ScSAM` in eval mode, already on ``device``).
        image: the slice ``(H, W)`` on the input grid, normalised to [0, 1] unless ``normalize`` is given (a
            memory-mapped array is read a band at a time).
        tiling: tile size (the model's canvas), overlap, Gaussian sigma and tiles per model call.
        scale: input pixel size / model pixel size (1.0: segment the slice as it is).
        device: where the tiles go and the blending runs.
        autocast: a re-enterable context manager (``torch.autocast``) entered around each model call.
        threshold: sigmoid probability a class needs to win a pixel.
        probabilities: also return the per-class sigmoid probabilities.
        normalize: an elementwise map of raw intensities to float32 [0, 1] (a volume's
            :class:`~scsam_monai.data.normalize.SliceNormalizer`), applied to each band of rows as it is read, so
            that a large slice stays in memory in its own dtype (a quarter of float32's bytes for uint8).

    Returns:
        ``(labels, probabilities)``: labels ``(H, W)`` uint8 (uint16 above 255 classes), 0 background and 1..C
        classes; probabilities ``(C, H, W)`` float32, or None unless asked for. Both numpy, on the input grid.

    Raises:
        ValueError: an image that is not 2D, a bad ``scale`` or ``tiling``, model output of the wrong shape.
    """
    image = _as_2d_image(image)
    height, width = (int(v) for v in image.shape)
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    bands = _class_logit_bands(
        model, image, tiling=tiling, scale=scale, device=device, autocast=autocast, normalize=normalize
    )
    with torch.inference_mode():
        for top, logits in bands:
            many = logits.shape[0] >= 256
            if labels is None:
                labels = np.empty((height, width), dtype=np.uint16 if many else np.uint8)
                if probabilities:
                    probs = np.empty((logits.shape[0], height, width), dtype=np.float32)
            merged = merge_class_logits(logits, threshold)[0]
            labels[top : top + logits.shape[1]] = merged.to(torch.int32 if many else torch.uint8).cpu().numpy()
            if probs is not None:
                probs[:, top : top + logits.shape[1]] = torch.sigmoid(logits).cpu().numpy()
    return labels, probs
