"""Per-volume intensity normalisation with robust percentiles, for uint8, uint16 and float EM data.

A volume's intensity window is measured once over all the slices that are prepared (not per slice), so that
every slice of a cell keeps the same contrast: a slice full of dark granules stays darker than one with a pale
nucleus. The window runs from the ``lower`` to the ``upper`` percentile (0.5 and 99.5 by default, MONAI's
``ScaleIntensityRangePercentiles`` definition: linear interpolation between order statistics), so a few
saturated or dead voxels do not set the contrast.

Integer data up to 16 bits are counted in an exact histogram; wider integers and floats are sampled (every
k-th voxel of each slice, at most ``max_samples`` values in all), which is exact for small volumes. Non-finite
float values are ignored when measuring and become the window's low end when normalising.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .io import DataPreparationError

__all__ = ["IntensityWindow", "PercentileAccumulator", "volume_window", "normalize_slice"]


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
            flat = image.ravel().astype(np.int64) - self.offset
            self.histogram += np.bincount(flat, minlength=self.histogram.size)[: self.histogram.size]
            return
        flat = image.ravel()
        if flat.size > self.per_slice:
            flat = flat[:: int(np.ceil(flat.size / self.per_slice))]
            self.exact = False
        flat = flat.astype(np.float64)
        self.samples.append(flat[np.isfinite(flat)])

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


def normalize_slice(image: np.ndarray, window: IntensityWindow, dtype: str = "uint8") -> np.ndarray:
    """Map ``image`` through ``window``: clip to ``[low, high]`` and scale to 0..255 (uint8) or 0..1 (float32).

    Args:
        image: a slice of the volume the window was measured on.
        window: the volume's window.
        dtype: ``"uint8"`` or ``"float32"``.
    """
    scaled = (np.asarray(image, dtype=np.float64) - window.low) / (window.high - window.low)
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if dtype == "uint8":
        return np.round(scaled * 255.0).astype(np.uint8)
    if dtype == "float32":
        return scaled.astype(np.float32)
    raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}.")
