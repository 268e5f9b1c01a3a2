"""Checks of the files a MONAI Label client sends: images to segment or to add, and label maps to save.

A file that the model cannot use must come back to the client as a 4xx answer naming the problem, not as a
server error (500) or, worse, a file that sits in the datastore and breaks the next training. The checks read
files with the package's own readers (:func:`~scsam_monai.io.readers.open_volume`) and raise
:class:`UploadRejected` with an HTTP status:

- 415 Unsupported Media Type: a file type the app does not accept (by its name);
- 422 Unprocessable Entity: a file of an accepted type that cannot be used: unreadable or corrupt, not one
  single-channel 2D image or 3D stack (RGB, 4D, several channels), empty, NaN or infinite pixels, a label map
  with values outside ``0..num_classes`` or of another shape than its image.

This module depends on numpy and the package's readers only (no MONAI Label, no FastAPI), so that it can be
tested and reused on its own; :mod:`scsam_monai.label.datastore` and :mod:`scsam_monai.label.infer` turn
:class:`UploadRejected` into FastAPI's ``HTTPException``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from scsam_monai.io.readers import DataPreparationError, check_pixels, open_volume

__all__ = ["ACCEPTED_SUFFIXES", "UploadRejected", "accepted_suffix", "check_image", "check_label"]

ACCEPTED_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File types the MONAI Label app accepts as images and label maps (2D images and 3D stacks)."""


class UploadRejected(ValueError):
    """A file a client sent cannot be used; ``status_code`` is the HTTP answer (415 or 422).

    Args:
        status_code: HTTP status for the client.
        message: what is wrong, naming the file.
    """

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def accepted_suffix(name: str | Path) -> str | None:
    """The accepted suffix ``name`` ends with (``.nii.gz`` before ``.gz``), or None."""
    lower = str(name).lower()
    return next((s for s in ACCEPTED_SUFFIXES if lower.endswith(s)), None)


def _open(path: Path, what: str, display: str):
    if accepted_suffix(path) is None:
        raise UploadRejected(415, f"{display}: unsupported {what} file type; accepted: {', '.join(ACCEPTED_SUFFIXES)}.")
    if not path.is_file() or path.stat().st_size == 0:
        raise UploadRejected(422, f"{display}: the {what} file is empty or missing.")
    try:
        return open_volume(path)
    except DataPreparationError as err:
        raise UploadRejected(422, str(err).replace(str(path), display)) from err


def _slices(volume, display: str, source: str) -> Iterator[np.ndarray]:
    """The volume's z slices one at a time, each checked like a whole image (memory: one slice, any stack)."""
    if min(volume.shape) == 0:
        raise UploadRejected(422, f"{display}: the image is empty (shape {tuple(volume.shape)}).")
    for z in range(volume.shape[0]):
        where = display if volume.shape[0] == 1 else f"{display} (slice {z})"
        try:
            plane = volume.read_slice(z)
            check_pixels(plane, where)
        except DataPreparationError as err:
            raise UploadRejected(422, str(err).replace(source, display)) from err
        yield plane


def check_image(path: str | Path, *, name: str | None = None) -> tuple[int, int, int]:
    """Check that ``path`` is a usable EM image: one single-channel 2D image or 3D stack of finite pixels.

    Args:
        path: the file (its name decides the reader, as for :func:`~scsam_monai.io.readers.open_volume`).
        name: how messages name the file (the client's file name or image id); defaults to ``path``.

    Returns:
        The image's shape ``(Z, H, W)`` (``Z`` = 1 for a 2D image).

    Raises:
        UploadRejected: 415 for a file type that is not accepted, 422 for a file that cannot be read or used.
    """
    path = Path(path)
    display = name or str(path)
    with _open(path, "image", display) as volume:
        for _ in _slices(volume, display, str(path)):
            pass
        return tuple(int(s) for s in volume.shape)  # type: ignore[return-value]


def check_label(
    path: str | Path,
    *,
    num_classes: int,
    image_shape: Sequence[int] | None = None,
    name: str | None = None,
) -> tuple[int, int, int]:
    """Check that ``path`` is a usable label map: integers ``0..num_classes``, of its image's shape.

    Args:
        path: the label file.
        num_classes: number of foreground classes (values above it are rejected).
        image_shape: the image's ``(Z, H, W)``; None to skip the shape check.
        name: how messages name the file; defaults to ``path``.

    Returns:
        The label map's shape ``(Z, H, W)``.

    Raises:
        UploadRejected: 415 for a file type that is not accepted, 422 for an unreadable file, non-integer values,
            values outside ``0..num_classes`` or a shape that differs from ``image_shape``.
    """
    path = Path(path)
    display = name or str(path)
    with _open(path, "label", display) as volume:
        shape = tuple(int(s) for s in volume.shape)
        if image_shape is not None and shape != tuple(int(s) for s in image_shape):
            raise UploadRejected(422, f"{display}: the label map has shape {shape}, its image {tuple(image_shape)}.")
        found: set = set()
        for plane in _slices(volume, display, str(path)):
            if plane.dtype.kind == "f" and not np.array_equal(plane, np.round(plane)):
                raise UploadRejected(
                    422, f"{display}: the label map holds non-integer values; expected 0..{num_classes}."
                )
            found.update(np.unique(plane).tolist())
    values = np.array(sorted(found))
    bad = values[(values < 0) | (values > num_classes)]
    if bad.size:
        raise UploadRejected(
            422,
            f"{display}: the label map holds values {bad[:5].tolist()} outside 0..{num_classes} "
            f"(0 background, 1..{num_classes} the classes).",
        )
    return shape  # type: ignore[return-value]
