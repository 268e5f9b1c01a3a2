"""Seeded synthetic FIB-SEM-like slices of a pancreatic beta cell: the bundle's embedded demo and test data set.

Each slice is drawn from one seed and shows, in the EM convention of dark membranes and dense cores on a lighter
background:

- the cell membrane, a dark line around a large blob (the other side is a neighbouring cell's cytoplasm);
- cytoplasm with a fine mottled texture, rough-ER-like thin dark lines and ribosome-like dark specks;
- in most slices (``NUCLEUS_PROBABILITY``) a nucleus with a double envelope (two thin dark lines with a light
  perinuclear space), darker heterochromatin under the envelope and in clumps, sometimes a dark nucleolus, and
  a mean intensity matched to the cytoplasm, so that it differs by texture and envelope, not by brightness;
  it may run out of the field of view;
- elongated, slightly bent mitochondria of random orientation and length: darker matrix, dark outline and
  light cristae stripes across the short axis;
- many dense-core granules: a dark round core (radius 4-8 px at 256 px) often off-centre inside a light halo,
  bounded by a faint limiting membrane; they do not overlap the nucleus, mitochondria or the cell membrane;
- uneven illumination, blur (point spread), Poisson and Gaussian noise.

Labels are 0 background (cytoplasm, membranes, neighbour cell), 1 nucleus (inside the outer envelope line),
2 mitochondria (including the outline) and 3 granules. The granule label covers the whole granule, core plus
halo up to the limiting membrane: that disc is the visually distinct object (a light ring around a dark core),
whereas the core alone would be confusable with other dark specks. Because halos are light and cores dark, no
single intensity threshold isolates any class.

The data are synthetic: a model that segments them well is no evidence of quality on real EM.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

from scsam_monai.atomic import atomic_write, atomic_write_text

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "NUCLEUS_PROBABILITY",
    "slice_seed",
    "synthesize_slice",
    "write_synthetic_dataset",
]

CLASS_NAMES: tuple[str, ...] = ("background", "nucleus", "mitochondria", "granules")
"""Class names, indexed by label value."""

GENERATOR_VERSION = 1
"""Bumped whenever the drawing changes, so that cached data sets are regenerated."""

NUCLEUS_PROBABILITY = 0.8
"""Chance that a slice shows a nucleus."""

_SEED_STRIDE = 100003
_SPLITS = ("train", "val", "test")
_DATALIST_KEYS = {"train": "training", "val": "validation", "test": "test"}
_FILE_PATTERN = re.compile(r"^(train|val|test)_\d{3,}\.tif$")

# Intensities on a 0 (black) .. 1 (white) scale before illumination, blur and noise.
_CYTOPLASM = 0.62
_NEIGHBOUR = 0.58
_MITO_MATRIX = 0.44
_HALO = 0.82
_CORE = 0.16


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation.

    Args:
        rng: random generator.
        shape: output shape (H, W).
        sigma: filter width in pixels; larger gives blotchier texture.
    """
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _line(distance: np.ndarray, at: float, width: float) -> np.ndarray:
    """Gaussian line profile, 1 where ``distance == at`` and falling off over ``width`` pixels."""
    return np.exp(-(((distance - at) / width) ** 2))


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the boundary of ``mask`` in pixels, negative inside and positive outside."""
    if mask.all():
        return np.full(mask.shape, -1e6)
    if not mask.any():
        return np.full(mask.shape, 1e6)
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _polar_blob(
    shape: tuple[int, int], center: tuple[float, float], radius: float, rng: np.random.Generator, roughness: float
) -> np.ndarray:
    """Mask of a star-shaped blob whose radius varies with angle by a few random low harmonics.

    Args:
        shape: mask shape (H, W).
        center: blob centre (row, column), may lie outside the mask.
        radius: mean radius in pixels.
        rng: random generator.
        roughness: relative amplitude of the harmonics; 0 gives a disc.
    """
    yy, xx = np.indices(shape, dtype=np.float64)
    dy, dx = yy - center[0], xx - center[1]
    theta = np.arctan2(dy, dx)
    profile = np.ones_like(theta)
    for k in range(2, 6):
        profile += roughness / k * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) < radius * profile


def _window(
    shape: tuple[int, int], center: tuple[float, float], reach: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Slices of the square of half-side ``reach`` around ``center``, clipped to ``shape``, and its coordinates.

    Returns:
        The (row, column) slices, and the row offsets (a column vector) and column offsets (a row vector) from
        ``center`` of the window's pixels, which broadcast to the window's shape.
    """
    r0, r1 = max(int(center[0] - reach), 0), min(int(center[0] + reach) + 2, shape[0])
    c0, c1 = max(int(center[1] - reach), 0), min(int(center[1] + reach) + 2, shape[1])
    yy, xx = np.ogrid[r0:r1, c0:c1]
    return (slice(r0, r1), slice(c0, c1)), yy - center[0], xx - center[1]


def _draw_background(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Cytoplasm of the cell and its neighbour, separated by the dark cell membrane.

    Returns:
        The image and the signed distance to the cell membrane (negative inside the cell).
    """
    h, w = shape
    center = (rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w)
    cell = _polar_blob(shape, center, rng.uniform(0.6, 0.9) * max(h, w), rng, roughness=0.35)
    cell_sd = _signed_distance(cell)

    image = np.where(cell, _CYTOPLASM, _NEIGHBOUR)
    image = image + 0.035 * _smooth_noise(rng, shape, 1.0 * scale) + 0.03 * _smooth_noise(rng, shape, 6.0 * scale)
    # Rough-ER-like thin curved dark lines: a level set of a smooth field, only in some patches.
    level = _smooth_noise(rng, shape, 5.0 * scale)
    patches = np.clip(_smooth_noise(rng, shape, 18.0 * scale) - 0.2, 0.0, 1.0)
    image -= 0.3 * np.exp(-((level / 0.12) ** 2)) * patches
    # Ribosome / glycogen-like dark specks.
    specks = ndimage.gaussian_filter((rng.random(shape) < 0.006).astype(np.float64), 0.8 * scale)
    image -= 0.25 * specks / (specks.max() + 1e-12)
    image -= 0.45 * _line(cell_sd, 0.0, max(1.3 * scale, 0.8))
    return image, cell_sd


def _draw_nucleus(rng: np.random.Generator, image: np.ndarray, cell_sd: np.ndarray, scale: float) -> np.ndarray | None:
    """Draw a nucleus inside the cell, in place, or nothing when it does not fit.

    Returns:
        The nucleus mask, or None when no nucleus was drawn.
    """
    shape = image.shape
    radius = rng.uniform(0.2, 0.3) * min(shape)
    for _ in range(4):
        candidates = np.flatnonzero(cell_sd < -(1.2 * radius + 8 * scale))
        if candidates.size:
            break
        radius *= 0.8
    else:
        return None
    center = np.unravel_index(rng.choice(candidates), shape)
    mask = _polar_blob(shape, (float(center[0]), float(center[1])), radius, rng, roughness=0.25)
    if mask.sum() < (6 * scale) ** 2 * np.pi:
        return None
    sd = _signed_distance(mask)
    target = float(image[~mask].mean()) + rng.uniform(-0.02, 0.03)

    inside = 0.07 * _smooth_noise(rng, shape, 3.0 * scale) + 0.02 * _smooth_noise(rng, shape, 0.8 * scale)
    clumps = ndimage.gaussian_filter((_smooth_noise(rng, shape, 4.0 * scale) > 1.2).astype(np.float64), scale)
    inside -= 0.2 * clumps + 0.18 * np.exp(np.minimum(sd, 0.0) / (4.0 * scale))
    if rng.random() < 0.6:
        r_nucleolus = rng.uniform(7, 13) * scale
        deep = np.flatnonzero((sd < -(r_nucleolus + 10 * scale)).ravel())
        if deep.size:
            cy, cx = np.unravel_index(rng.choice(deep), shape)
            nucleolus = _polar_blob(shape, (float(cy), float(cx)), r_nucleolus, rng, roughness=0.3)
            inside -= 0.25 * ndimage.gaussian_filter(nucleolus.astype(np.float64), scale)
    inside += target - inside[mask].mean()
    image[mask] = inside[mask]

    gap = 3.5 * scale
    width = max(0.8 * scale, 0.6)
    image += 0.08 * np.clip(1.0 - np.abs(sd + gap / 2) / (gap / 2), 0.0, 1.0)
    image -= 0.42 * (_line(sd, -0.5 * width, width) + _line(sd, -gap, width))
    return mask


def _capsule(
    yy: np.ndarray, xx: np.ndarray, length: float, width: float, angle: float, bend: float
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to a slightly bent capsule and the coordinate along its axis.

    Args:
        yy: row offsets from the capsule centre.
        xx: column offsets from the capsule centre.
        length: axis length between the cap centres.
        width: capsule diameter.
        angle: axis orientation in radians.
        bend: curvature of the axis (v = bend * u**2).
    """
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle) - bend * u**2
    beyond = np.maximum(np.abs(u) - length / 2, 0.0)
    return np.hypot(beyond, v) - width / 2, u


def _draw_mitochondria(
    rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray, scale: float
) -> list[np.ndarray]:
    """Draw non-overlapping mitochondria in place, at least two, and mark them in ``occupied``.

    Returns:
        One full-size mask per mitochondrion.
    """
    shape = image.shape
    area = shape[0] * shape[1] / 256**2
    wanted = max(2, int(round(rng.integers(4, 10) * area)))
    masks: list[np.ndarray] = []
    shrink = 1.0
    while len(masks) < 2 or (len(masks) < wanted and shrink == 1.0):
        for _ in range(40 * wanted):
            if len(masks) >= wanted:
                break
            length = rng.uniform(10, 60) * scale * shrink
            width = rng.uniform(11, 18) * scale * shrink
            angle, bend = rng.uniform(0, np.pi), rng.uniform(-1, 1) * 0.012 / scale
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
            win, yy, xx = _window(shape, center, length / 2 + width / 2 + 4 * scale)
            sd, u = _capsule(yy, xx, length, width, angle, bend)
            if (occupied[win] & (sd < 3 * scale)).any() or not (sd < 0).any():
                continue
            alpha = np.clip(0.5 - sd, 0.0, 1.0)
            period = rng.uniform(4.5, 7.0) * scale
            stripes = np.cos(2 * np.pi * u / period + 0.6 * rng.standard_normal() * np.sin(u / (3 * scale)))
            cristae = np.clip((stripes - 0.4) / 0.6, 0.0, 1.0) * (sd < -2.0 * scale)
            texture = 0.025 * rng.standard_normal(sd.shape)
            mito = _MITO_MATRIX + rng.uniform(-0.03, 0.03) + 0.22 * cristae + texture
            image[win] = image[win] * (1 - alpha) + mito * alpha - 0.3 * _line(sd, -1.0 * scale, max(scale, 0.7))
            mask = np.zeros(shape, dtype=bool)
            mask[win] = sd <= 0
            occupied[win] |= sd < 2 * scale
            masks.append(mask)
        shrink *= 0.7
    return masks


def _draw_granules(rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray, scale: float) -> list[np.ndarray]:
    """Draw many non-overlapping dense-core granules in place, at least five, and mark them in ``occupied``.

    Returns:
        One full-size mask (core plus halo) per granule.
    """
    shape = image.shape
    area = shape[0] * shape[1] / 256**2
    wanted = max(5, int(round(rng.integers(35, 80) * area)))
    masks: list[np.ndarray] = []
    shrink = 1.0
    while len(masks) < 5 or (len(masks) < wanted and shrink == 1.0):
        for _ in range(30 * wanted):
            if len(masks) >= wanted:
                break
            core = max(rng.uniform(4.0, 8.0) * scale * shrink, 1.5)
            halo = max(rng.uniform(1.5, 4.0) * scale * shrink, 1.0)
            outer = core + halo + max(scale, 0.7)
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
            if occupied[int(center[0]), int(center[1])]:
                continue
            win, yy, xx = _window(shape, center, outer + 2)
            r = np.hypot(yy, xx)
            if (occupied[win] & (r < outer + 1.5 * scale)).any():
                continue
            shift = rng.uniform(0, 0.8) * halo
            phi, stretch, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.0), rng.uniform(0, np.pi)
            cy, cx = yy - shift * np.sin(phi), xx - shift * np.cos(phi)
            a = cx * np.cos(tilt) + cy * np.sin(tilt)
            b = -cx * np.sin(tilt) + cy * np.cos(tilt)
            r_core = np.hypot(a, b / stretch)
            alpha = np.clip(outer - r + 0.5, 0.0, 1.0)
            core_alpha = np.clip(core * stretch - r_core + 0.5, 0.0, 1.0)
            value = _HALO + rng.uniform(-0.04, 0.03) + (_CORE - _HALO) * core_alpha
            value = value + 0.03 * rng.standard_normal(r.shape)
            image[win] = image[win] * (1 - alpha) + value * alpha - 0.18 * _line(r, outer - 0.5, max(0.6 * scale, 0.6))
            mask = np.zeros(shape, dtype=bool)
            mask[win] = r <= outer
            occupied[win] |= r <= outer
            masks.append(mask)
        shrink *= 0.7
    return masks


def _acquire(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """Simulate the microscope: uneven illumination, blur, Poisson and Gaussian noise, 8-bit quantisation."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (yy - 0.5) * np.sin(angle) + (xx - 0.5) * np.cos(angle)
    image = image * (1 + rng.uniform(0.0, 0.12) * ramp) * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03)
    image = ndimage.gaussian_filter(image, max(rng.uniform(0.7, 1.1) * scale, 0.5))
    peak = rng.uniform(60, 140)
    image = rng.poisson(np.clip(image, 0.0, 1.0) * peak) / peak + rng.normal(0, 0.02, image.shape)
    image = ndimage.gaussian_filter(image, 0.5)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def synthesize_slice(size: int | tuple[int, int] = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic EM slice of a beta cell and its label map.

    Structure sizes scale with ``min(H, W) / 256``. Every slice has at least two mitochondria and five granules;
    a nucleus appears with probability about ``NUCLEUS_PROBABILITY``.

    Args:
        size: image side, or (H, W); at least 32.
        seed: non-negative seed; the same seed gives the same arrays.

    Returns:
        The image (H, W) uint8, dark structures on a lighter background, and the label map (H, W) uint8 with
        values indexing ``CLASS_NAMES``.
    """
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng(seed)
    scale = min(shape) / 256
    label = np.zeros(shape, dtype=np.uint8)

    image, cell_sd = _draw_background(rng, shape, scale)
    occupied = np.abs(cell_sd) < 4 * scale
    if rng.random() < NUCLEUS_PROBABILITY:
        nucleus = _draw_nucleus(rng, image, cell_sd, scale)
        if nucleus is not None:
            label[nucleus] = 1
            occupied |= ndimage.binary_dilation(nucleus, iterations=max(int(4 * scale), 1))
    for mask in _draw_mitochondria(rng, image, occupied, scale):
        label[mask] = 2
    for mask in _draw_granules(rng, image, occupied, scale):
        label[mask] = 3
    return _acquire(rng, image, scale), label


def slice_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th slice (counted over train, val, test in that order) of a data set seeded ``seed``."""
    return seed * _SEED_STRIDE + index


def _split_names(counts: dict[str, int]) -> Iterator[tuple[str, str, int]]:
    """Yield (split, file name, slice index) for every slice, train first, indices running on across splits."""
    index = 0
    for split in _SPLITS:
        for i in range(counts[split]):
            yield split, f"{split}_{i:03d}.tif", index
            index += 1


def _is_current(datalist_path: Path, generator: dict[str, Any]) -> bool:
    """Whether ``datalist_path`` was written by this generator with these parameters and its files exist."""
    try:
        datalist = json.loads(datalist_path.read_text())
    except (OSError, ValueError):
        return False
    if datalist.get("generator") != generator:
        return False
    root = datalist_path.parent
    items = [item for key in _DATALIST_KEYS.values() for item in datalist.get(key, [])]
    return all((root / item[k]).is_file() for item in items for k in ("image", "label"))


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_train: int = 24,
    num_val: int = 6,
    num_test: int = 4,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set as uint8 TIFFs and a MONAI Decathlon-style ``datalist.json``.

    Files are ``out_dir/images/<split>_<nnn>.tif`` and ``out_dir/labels/<split>_<nnn>.tif`` for the splits
    train, val and test; the datalist lists them under ``training``, ``validation`` and ``test`` with paths
    relative to ``out_dir``, as ``monai.data.load_decathlon_datalist`` expects. Every slice has its own seed
    (``slice_seed``), so splits share no slice. Each file is written to a temporary name and renamed; an old
    datalist is removed first and the new one written last, so an interrupted run never leaves a data set that
    looks complete. When the datalist already records the same parameters and its files exist, nothing is
    written.

    Args:
        out_dir: folder to write into; created if missing.
        num_train: number of training slices.
        num_val: number of validation slices.
        num_test: number of test slices.
        size: image side in pixels.
        seed: data set seed.

    Returns:
        Path of ``datalist.json``.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"slice counts must be non-negative, got {counts}")
    if size < 32 or seed < 0:
        raise ValueError(f"size must be at least 32 and seed non-negative, got size={size}, seed={seed}")
    out_dir = Path(out_dir)
    datalist_path = out_dir / "datalist.json"
    generator = {"module": __name__, "version": GENERATOR_VERSION, **counts, "size": size, "seed": seed}
    if _is_current(datalist_path, generator):
        return datalist_path

    datalist_path.unlink(missing_ok=True)
    for sub in ("images", "labels"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, str]]] = {key: [] for key in _DATALIST_KEYS.values()}
    written = set()
    for split, name, index in _split_names(counts):
        image, label = synthesize_slice(size, seed=slice_seed(seed, index))
        for sub, array in (("images", image), ("labels", label)):
            atomic_write(out_dir / sub / name, lambda h, a=array: h.write(_tiff_bytes(a)))
        entries[_DATALIST_KEYS[split]].append({"image": f"images/{name}", "label": f"labels/{name}"})
        written.add(name)
    for sub in ("images", "labels"):
        for stale in (out_dir / sub).iterdir():
            if _FILE_PATTERN.match(stale.name) and stale.name not in written:
                stale.unlink(missing_ok=True)

    datalist = {
        "name": "scsam-synthetic-beta-cell",
        "description": (
            "Seeded synthetic FIB-SEM-like slices of a pancreatic beta cell for demos and tests; "
            "synthetic, not evidence of quality on real EM."
        ),
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": num_train,
        "numValidation": num_val,
        "numTest": num_test,
        "generator": generator,
        **entries,
    }
    atomic_write_text(datalist_path, json.dumps(datalist, indent=2) + "\n")
    return datalist_path


def _tiff_bytes(array: np.ndarray) -> bytes:
    """The TIFF file of ``array`` in memory (tifffile cannot write to the descriptor-only handle of a temp file)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()
