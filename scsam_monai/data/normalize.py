"""Intensity normalisation of EM slices with robust percentiles: the one place an image's intensities are scaled.

:func:`normalize_slice` maps a slice through an intensity window in one of two ways:

- **per image** (``window=None``): the slice's own 0.5th and 99.5th percentiles to 0 and 1, clipped, as float32.
  This is numerically MONAI's ``ScaleIntensityRangePercentiles(0.5, 99.5, b_min=0, b_max=1, clip=True)``, the
  ``per_image`` normalisation of ``bundle/configs/train.yaml`` and of volume inference.
- **per volume** (an :class:`IntensityWindow`): a window measured once over all the slices of a volume (not per
  slice), so that every slice of a cell keeps the same contrast: a slice full of dark granules stays darker than
  one with a pale nucleus. ``scsam-prepare`` writes ``normalize_slice(raw, window, "uint8")``; the float32 path
  ``normalize_slice(raw, window)`` equals that slice / 255 up to the uint8 rounding (at most 0.5 / 255), so a
  raw volume normalised on the fly matches the slices ``scsam-prepare`` wrote from it.

A volume's window runs from the ``lower`` to the ``upper`` percentile (0.5 and 99.5 by default, MONAI's
definition: linear interpolation between order statistics), so a few saturated or dead voxels do not set the
contrast. It is measured streaming, slice by slice in bounded memory (:class:`PercentileAccumulator`,
:func:`volume_window` over any iterable of slices, :func:`measure_volume_window` over a
:class:`~scsam_monai.io.readers.Volume`, the same measurement as ``scsam-prepare``'s). Integer data up to 16
bits are counted in an exact histogram; wider integers and floats are sampled (every k-th voxel of each slice,
at most ``max_samples`` values in all), which is exact for small volumes. Non-finite float values are ignored
when measuring and become the window's low end when normalising.

Which of the two a model needs is its ``image_normalization`` (:data:`IMAGE_NORMALIZATIONS`; the model's
:class:`~scsam_monai.data.preprocessing.ImagePreprocessing` holds it): ``per_image``, or ``prepared`` (trained on
``scsam-prepare``'s slices; raw
volumes are then normalised with their own per-volume window, and slices ``scsam-prepare`` wrote are mapped
through :data:`PREPARED_SLICE_WINDOW`, 0..255 to 0..1, as training read them). :class:`SliceNormalizer` applies
one window to many slices fast: 8- and 16-bit slices go through a lookup table of :func:`normalize_slice`'s
own values (one pass, identical results).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from scsam_monai.io.readers import DataPreparationError

if TYPE_CHECKING:
    from scsam_monai.io.readers import Volume

__all__ = [
    "PER_IMAGE_PERCENTILES",
    "IMAGE_NORMALIZATIONS",
    "PREPARED_SLICE_WINDOW",
    "SliceNormalizer",
    "IntensityWindow",
    "PercentileAccumulator",
    "volume_window",
    "measure_volume_window",
    "normalize_slice",
]

PER_IMAGE_PERCENTILES = (0.5, 99.5)
"""Lower and upper percentile of the per-image normalisation (``train.yaml``'s ``per_image``)."""
IMAGE_NORMALIZATIONS = ("per_image", "prepared")
"""Values of ``image_normalization`` (``train.yaml``): each slice by its own percentiles, or per volume as
``scsam-prepare`` normalises."""
_DTYPES = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}


@dataclass(frozen=True)
class IntensityWindow:
    """The intensity range ``[low, high]`` mapped to ``[0, 1]`` (uint8: 0..255).

    Args:
        low: value mapped to 0 (the lower percentile).
        high: value mapped to 1 (the upper percentile).
        lower_percentile: percentile that gave ``low``.
        upper_percentile: percentile that gave ``high``.
        minimum: smallest finite value seen.
        maximum: largest finite value seen.
        method: ``"percentiles"``, or ``"min-max"`` when the percentiles coincide (almost constant volume).
        exact: whether every voxel was counted (False when floats were sampled).
    """

    low: float
    high: float
    lower_percentile: float
    upper_percentile: float
    minimum: float
    maximum: float
    method: str = "percentiles"
    exact: bool = True

    def as_dict(self) -> dict:
        """The window as a JSON-ready dict (for the manifest)."""
        return asdict(self)


PREPARED_SLICE_WINDOW = IntensityWindow(0.0, 255.0, 0.0, 100.0, 0.0, 255.0, method="prepared slices (uint8 / 255)")
"""The window of slices ``scsam-prepare`` wrote: 0..255 to 0..1, ``train.yaml``'s ``prepared`` transform
(``ScaleIntensityRanged(a_min=0, a_max=255, b_min=0, b_max=1, clip=True)``)."""


def _percentile_from_histogram(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.percentile(data, q)`` (linear interpolation) of data given as sorted ``values`` with ``counts``."""
    total = int(counts.sum())
    position = q / 100.0 * (total - 1)
    below, frac = int(np.floor(position)), position - np.floor(position)
    cumulative = np.cumsum(counts)
    lo = values[np.searchsorted(cumulative, below + 1)]
    hi = values[np.searchsorted(cumulative, min(below + 2, total))]
    return float(lo + (hi - lo) * frac)


class PercentileAccumulator:
    """Collects a volume's intensity distribution slice by slice.

    Args:
        dtype: dtype of the volume's voxels.
        source: name used in error messages (the file).
        num_slices: number of slices that will be added (to spread the sampling budget of float data).
        max_samples: cap on the values kept for float and wide-integer data.
    """

    def __init__(self, dtype: np.dtype | str, source: str, num_slices: int = 1, max_samples: int = 20_000_000):
        self.dtype = np.dtype(dtype)
        self.source = source
        self.per_slice = max(1, max_samples // max(1, num_slices))
        self.exact = True
        self.size = 0
        small_int = self.dtype.kind in "biu" and self.dtype.itemsize <= 2
        self.offset = int(np.iinfo(self.dtype).min) if small_int and self.dtype.kind == "i" else 0
        self.histogram = np.zeros(1 << (8 * self.dtype.itemsize), np.int64) if small_int else None
        self.samples: list[np.ndarray] = []

    def update(self, image: np.ndarray) -> None:
        """Add one slice."""
        image = np.asarray(image)
        self.size += image.size
        if self.histogram is not None:
            # int32 indices and torch's bincount: exact counts, and the GIL is released (parallel measuring)
            flat = image.ravel().astype(np.int32)
            if self.offset:
                flat -= self.offset
            counts = torch.bincount(torch.from_numpy(flat), minlength=self.histogram.size)
            self.histogram += counts.numpy()[: self.histogram.size]
            return
        flat = image.ravel()
        if flat.size > self.per_slice:
            flat = flat[:: int(np.ceil(flat.size / self.per_slice))]
            self.exact = False
        flat = flat.astype(np.float64)
        self.samples.append(flat[np.isfinite(flat)])

    def merge(self, other: PercentileAccumulator) -> None:
        """Add everything ``other`` (an accumulator of the same dtype and budget) collected, e.g. in another thread."""
        self.size += other.size
        self.exact = self.exact and other.exact
        if self.histogram is not None:
            self.histogram += other.histogram
        else:
            self.samples.extend(other.samples)

    def window(self, lower: float = 0.5, upper: float = 99.5) -> IntensityWindow:
        """The percentile window of everything added.

        Raises:
            DataPreparationError: when the volume is empty, has no finite value, or is constant.
        """
        if not 0.0 <= lower < upper <= 100.0:
            raise DataPreparationError(f"{self.source}: percentiles must satisfy 0 <= lower < upper <= 100.")
        if self.size == 0:
            raise DataPreparationError(f"{self.source}: the volume is empty (no voxel to read).")
        if self.histogram is not None:
            present = np.flatnonzero(self.histogram)
            values, counts = (present + self.offset).astype(np.float64), self.histogram[present]
        else:
            data = np.concatenate(self.samples) if self.samples else np.zeros(0)
            if data.size == 0:
                raise DataPreparationError(f"{self.source}: the volume has no finite value.")
            values, counts = np.unique(data, return_counts=True)
        minimum, maximum = float(values[0]), float(values[-1])
        if minimum == maximum:
            raise DataPreparationError(
                f"{self.source}: the volume is constant (every voxel is {minimum:g}); there is nothing to segment."
            )
        low = _percentile_from_histogram(values, counts, lower)
        high = _percentile_from_histogram(values, counts, upper)
        method = "percentiles"
        if high <= low:
            low, high, method = minimum, maximum, "min-max"
        return IntensityWindow(low, high, lower, upper, minimum, maximum, method, self.exact)


def volume_window(
    slices: Iterable[np.ndarray], *, source: str, lower: float = 0.5, upper: float = 99.5
) -> IntensityWindow:
    """Percentile window of a volume given as an iterable of slices (all of one dtype).

    Args:
        slices: the slices, e.g. ``(volume.read_slice(i) for i in indices)``.
        source: the file, for error messages.
        lower: lower percentile.
        upper: upper percentile.
    """
    accumulator: PercentileAccumulator | None = None
    for image in slices:
        if accumulator is None:
            accumulator = PercentileAccumulator(np.asarray(image).dtype, source)
        accumulator.update(image)
    if accumulator is None:
        raise DataPreparationError(f"{source}: the volume is empty (no slice to read).")
    return accumulator.window(lower, upper)


def measure_volume_window(
    volume: Volume,
    *,
    indices: Sequence[int] | None = None,
    axis: int = 0,
    lower: float = PER_IMAGE_PERCENTILES[0],
    upper: float = PER_IMAGE_PERCENTILES[1],
    max_samples: int = 20_000_000,
    workers: int = 1,
) -> IntensityWindow:
    """The percentile window of a volume, read slice by slice (one slice in memory at a time per worker).

    This is the window ``scsam-prepare`` measures for a cell (the same accumulator, fed the same slices), so
    inference on a raw volume can normalise it as the prepared slices of that volume were normalised. With
    several ``workers`` the slices are read and counted in threads (reads and counts release the GIL), each on
    its own accumulator, merged at the end: the same counts, hence the same window.

    Args:
        volume: the opened volume (:func:`~scsam_monai.io.readers.open_volume`).
        indices: the slices to measure along ``axis``; None for all (as ``scsam-prepare`` without
            ``--middle-slices``).
        axis: slicing axis, 0 (z), 1 (y) or 2 (x).
        lower: lower percentile.
        upper: upper percentile.
        max_samples: cap on the values kept for float and wide-integer data (see :class:`PercentileAccumulator`).
        workers: threads reading and counting slices (1: all in this thread).

    Raises:
        DataPreparationError: when a slice cannot be read, or the measured slices are empty or constant.
    """
    indices = list(range(volume.num_slices(axis))) if indices is None else [int(i) for i in indices]
    workers = max(1, min(int(workers), len(indices)))

    def measure(chunk: Sequence[int]) -> PercentileAccumulator:
        accumulator = PercentileAccumulator(volume.dtype, volume.source, len(indices), max_samples)
        for index in chunk:
            accumulator.update(volume.read_slice(index, axis))
        return accumulator

    if workers == 1:
        return measure(indices).window(lower, upper)
    chunks = [indices[k::workers] for k in range(workers)]
    with ThreadPoolExecutor(workers, thread_name_prefix="measure-window") as pool:
        first, *others = pool.map(measure, chunks)
    for other in others:
        first.merge(other)
    return first.window(lower, upper)


def normalize_slice(image: np.ndarray, window: IntensityWindow | None = None, dtype: str = "float32") -> np.ndarray:
    """Scale a slice's intensities to [0, 1] through an intensity window, as float32, uint8 or uint16.

    Args:
        image: a slice (any shape and real dtype; the window applies to every element).
        window: a volume's window (from :func:`measure_volume_window`, :func:`volume_window`, or a manifest's
            ``intensity_window``), clipped, non-finite values at its low end; None for the slice's own
            :data:`PER_IMAGE_PERCENTILES`, exactly as MONAI's ``ScaleIntensityRangePercentiles(0.5, 99.5, 0, 1,
            clip=True)`` computes it in float32 (including MONAI's rule for a slice whose percentiles coincide:
            the intensities minus the low percentile, unscaled).
        dtype: ``"float32"`` (0..1), ``"uint8"`` (0..255, as ``scsam-prepare`` writes) or ``"uint16"``
            (0..65535); the integer values are the float values times the maximum, rounded.

    Returns:
        The normalised slice, of ``image``'s shape.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}.")
    if window is None:
        scaled = _per_image(np.asarray(image, dtype=np.float32))
    else:
        scaled = (np.asarray(image, dtype=np.float64) - window.low) / (window.high - window.low)
        scaled = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if dtype == "float32":
        return scaled.astype(np.float32, copy=False)
    return np.round(np.clip(scaled, 0.0, 1.0) * _DTYPES[dtype]).astype(dtype)


def _per_image(image: np.ndarray) -> np.ndarray:
    """MONAI's ``ScaleIntensityRangePercentiles(0.5, 99.5, b_min=0, b_max=1, clip=True)`` on a float32 array."""
    return _scale_per_image(image, *_per_image_bounds(image))


def _per_image_bounds(image: np.ndarray, *, overwrite: bool = False) -> tuple[np.float32, np.float32]:
    """The float32 percentiles :func:`_per_image` scales ``image`` (float32) by; ``overwrite``: partition ``image``
    in place (a copy the caller throws away) instead of copying it once more."""
    low, high = np.percentile(image, PER_IMAGE_PERCENTILES, overwrite_input=overwrite)
    return np.float32(low), np.float32(high)


def _scale_per_image(image: np.ndarray, low: np.float32, high: np.float32) -> np.ndarray:
    """:func:`_per_image`'s elementwise scaling, in float32, of a slice or any part of it."""
    image = np.asarray(image, dtype=np.float32)
    if high - low == 0:  # MONAI: "Divide by zero (a_min == a_max)" returns the shifted image, unscaled, unclipped
        return image - low
    return np.clip((image - low) / (high - low), np.float32(0.0), np.float32(1.0))


class SliceNormalizer:
    """:func:`normalize_slice` ``(image, window)`` to float32 with one window fixed, for the many slices of a volume.

    Slices of 8- or 16-bit integers (or booleans) are mapped through a lookup table holding
    :func:`normalize_slice`'s value for every possible intensity (built once per dtype): one gather per slice
    instead of several float64 passes, with identical results. Other dtypes, and ``window=None`` (each slice's
    own percentiles), call :func:`normalize_slice`.

    Args:
        window: the volume's window; None for per-image normalisation.
    """

    def __init__(self, window: IntensityWindow | None) -> None:
        self.window = window
        self._tables: dict[np.dtype, np.ndarray] = {}

    def _table(self, dtype: np.dtype) -> np.ndarray | None:
        if self.window is None or dtype.kind not in "biu" or dtype.itemsize > 2:
            return None
        if dtype not in self._tables:
            codes = np.arange(1 << (8 * dtype.itemsize), dtype=np.int64).astype(f"u{dtype.itemsize}")
            values = codes.view(np.bool_ if dtype.kind == "b" else dtype.newbyteorder("="))
            self._tables[dtype] = normalize_slice(values, self.window)
        return self._tables[dtype]

    def for_bands(self, image: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """An elementwise map that normalises any band of ``image``'s rows to exactly the values ``self(image)``
        gives them, so that a large slice is normalised a band at a time, kept in its own dtype until then.

        With a volume window, this normaliser itself. Per image, the slice's percentiles are measured first, on
        one float32 copy partitioned in place and freed at once.
        """
        if self.window is not None:
            return self
        bounds = _per_image_bounds(np.array(image, dtype=np.float32), overwrite=True)
        return partial(_scale_per_image, low=bounds[0], high=bounds[1])

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The normalised slice (float32, ``image``'s shape), written into ``out`` when given."""
        image = np.asarray(image)
        table = self._table(image.dtype)
        if table is None:
            result = normalize_slice(image, self.window)
            if out is None:
                return result
            out[...] = result
            return out
        codes = image.astype(image.dtype.newbyteorder("="), copy=False).view(f"u{image.dtype.itemsize}")
        return np.take(table, codes, out=out, mode="clip")  # codes are always in range; "clip" is unbuffered
