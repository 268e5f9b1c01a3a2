"""Segment images and volumes of any size from the command line: the inputs, the segmenting loop, overlays.

:func:`segment_inputs` is what ``bundle/configs/inference.yaml`` runs. It lists the inputs (a 2D image, a 3D stack,
an N5/Zarr container, or a folder of them), opens each with :func:`~scsam_monai.io.readers.open_volume`, feeds
its slices lazily to :func:`~scsam_monai.engines.volume_inference.segment_slices` (reading, model and writing
overlapped in three threads) and hands every label map to a writer of :mod:`scsam_monai.io.writers` as it
comes out, so that neither the volume nor its segmentation is ever held whole. Intensities are normalised as
the model was trained (``image_normalization``: per image, or per volume as ``scsam-prepare`` does). Outputs
are written atomically: a failed input leaves nothing half-written. A label map is written in the input's own
format (TIFF, HDF5, Zarr, N5, PNG for 2D PNG/JPEG/BMP images, NIfTI for NIfTI/MHA/NRRD) unless another is asked
for, with the input's spacing.

Label maps are ``uint8`` (0 background, 1..C classes). Optional per-class probability maps (float32, one file
per class, same format) and overlay PNGs (image | label map, in the colours of :mod:`scsam_monai.palette`)
of chosen slices.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scsam_monai.atomic import atomic_write, atomic_write_json
from scsam_monai.data.normalize import IntensityWindow
from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.engines.volume_inference import segment_slices, volume_slices
from scsam_monai.io.formats import (
    IMAGE_SUFFIXES,
    OUTPUT_SUFFIXES,
    VOLUME_SUFFIXES,
    file_stem,
    file_suffix,
    is_container,
)
from scsam_monai.io.readers import open_volume
from scsam_monai.io.writers import SliceWriter, open_writer, output_format_for
from scsam_monai.palette import overlay_rgb8

__all__ = ["list_inputs", "write_overlay", "segment_volume", "segment_inputs"]

logger = logging.getLogger(__name__)


def list_inputs(
    input: str | Path | None,
    *,
    datalist: str | Path | None = None,
    split: str | None = None,
) -> list[str]:
    """The images and volumes to segment, each one output.

    Args:
        input: a 2D image or a 3D stack file (TIFF, PNG/JPEG/BMP, HDF5, NIfTI/MHA/NRRD), an N5 or Zarr container,
            or a folder: every such file and container directly in it, each segmented on its own (a folder of
            per-slice PNGs gives one PNG label map per slice).
        datalist: MONAI datalist JSON; with ``split`` its split's images are segmented instead of ``input``.
        split: datalist key, e.g. ``test``.

    Raises:
        FileNotFoundError / ValueError: with the path, when nothing can be found.
    """
    if datalist is not None and split:
        from scsam_monai.engines.inference_inputs import image_list

        return [item["image"] for item in image_list(None, datalist=datalist, split=split)]
    if input is None:
        raise ValueError("Name what to segment: --input PATH (an image, a stack, a container or a folder).")
    text = str(input)
    if "://" in text:
        return [text]
    root = Path(text)
    if not root.exists():
        raise FileNotFoundError(f"{root}: input not found.")
    if root.is_file() or is_container(root):
        return [str(root)]
    found = [
        str(p)
        for p in sorted(root.iterdir())
        if not p.name.startswith(".")
        and ((p.is_file() and file_suffix(p) in IMAGE_SUFFIXES + VOLUME_SUFFIXES) or (p.is_dir() and is_container(p)))
    ]
    if not found:
        raise ValueError(f"{root}: no image, stack or container to segment in this folder.")
    return found


def write_overlay(path: str | Path, image: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> Path:
    """PNG of an image slice next to the same slice with its label map blended in colour (image | overlay)."""
    from PIL import Image

    rgb = Image.fromarray(overlay_rgb8(image, label, alpha))
    return atomic_write(path, lambda handle: rgb.save(handle, format="PNG"))


def segment_volume(
    model: nn.Module,
    input: str | Path,
    output_dir: str | Path,
    *,
    key: str | None = None,
    output_format: str | None = None,
    class_names: Sequence[str] | None = None,
    probabilities: bool = False,
    overlay_slices: Sequence[int] | str | None = "middle",
    suffix: str = "_seg",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    amp: bool = True,
    amp_dtype: torch.dtype | None = None,
    threshold: float = 0.5,
    inputs: str = "raw",
    window: IntensityWindow | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment one image or volume slice by slice (along z) and write its label map as the slices come.

    The slices are normalised as the model's preprocessing says (``model.preprocessing``, recorded with its
    weights); for ``prepared``, a raw input is read twice: once to measure its intensity window (as
    ``scsam-prepare`` measures a cell), once to segment it. Every output is written atomically (see
    :class:`~scsam_monai.io.writers.SliceWriter`): when a read, the model or a write fails, the partial label
    map, probability maps and overlays of this input are removed and the error is raised.

    Args:
        model: image-to-logits model (the bundle's ``ScSAM``), ``(B, 1, H, W)`` in [0, 1] -> ``(B, C, H, W)``.
        input: what :func:`~scsam_monai.io.readers.open_volume` opens (file, container, URL).
        output_dir: destination folder.
        key: dataset inside an HDF5 file / array inside an N5 or Zarr container.
        output_format: one of :data:`~scsam_monai.io.formats.OUTPUT_FORMATS`; None for the input's format.
        class_names: names of label values 0..C (probability files are named after classes 1..C).
        probabilities: also write the per-class sigmoid probabilities, float32, ``<stem>_prob_<class>``.
        overlay_slices: slice indices for overlay PNGs ``<stem>_overlay_z<index>.png``; ``"middle"`` for the
            middle slice, None or ``[]`` for none.
        suffix: appended to the input's name for the label map.
        batch_size, device, amp, amp_dtype, threshold, progress: as
            :func:`~scsam_monai.engines.volume_inference.segment_slices`.
        inputs: ``"raw"`` (a file given to inference) or ``"datalist"`` (a datalist's item: for ``prepared``, a
            slice ``scsam-prepare`` wrote), see :meth:`~scsam_monai.data.preprocessing.ImagePreprocessing.window`.
        window: a known intensity window for ``"prepared"`` (None: as ``inputs`` says).

    Returns:
        ``{"input", "label", "probabilities", "overlays", "format", "shape", "spacing_zyx",
        "image_normalization", "intensity_window"}`` (paths as strings; the window as a dict, None per image).
    """
    output_dir = Path(output_dir)
    stem = file_stem(input)
    with open_volume(input, key) as volume:
        fmt = output_format_for(input, volume, output_format)
        ext = OUTPUT_SUFFIXES[fmt]
        depth = volume.shape[0]
        preprocessing = ImagePreprocessing.of_model(model)
        window = preprocessing.window(volume, window, inputs=inputs)
        if window is not None:
            logger.info("%s: intensity window %.6g..%.6g (%s)", input, window.low, window.high, window.method)
        if overlay_slices == "middle":
            overlay_slices = [depth // 2]
        chosen = {int(i) for i in (overlay_slices or []) if 0 <= int(i) < depth}
        kept: dict[int, np.ndarray] = {}  # raw slices of the overlays, from the reader thread to the writer thread
        overlays: list[str] = []
        names: list[str] = []
        if probabilities:
            num_classes = _num_classes(model, class_names)
            names = list(class_names[1:]) if class_names else [f"class{c + 1}" for c in range(num_classes)]
        label_path = output_dir / f"{stem}{suffix}{ext}"
        prob_paths = [output_dir / f"{stem}_prob_{name}{ext}" for name in names]
        writers: list[SliceWriter] = []

        def slices() -> Iterator[np.ndarray]:
            for index, image in enumerate(volume_slices(volume)):
                if index in chosen:
                    kept[index] = image
                yield image

        def write(index: int, label: np.ndarray, probs: np.ndarray | None = None) -> None:
            writers[0].write(index, label)
            for c, writer in enumerate(writers[1:]):
                writer.write(index, probs[c])  # type: ignore[index]
            if index in kept:
                path = output_dir / f"{stem}_overlay_z{index:05d}.png"
                overlays.append(str(write_overlay(path, kept.pop(index), label)))

        try:
            writers.append(open_writer(label_path, fmt, volume.shape, np.uint8, volume))
            writers.extend(open_writer(path, fmt, volume.shape, np.float32, volume) for path in prob_paths)
            segment_slices(
                model,
                slices(),
                writer=write,
                batch_size=batch_size,
                device=device,
                amp=amp,
                amp_dtype=amp_dtype,
                threshold=threshold,
                preprocessing=preprocessing,
                window=window,
                probabilities=probabilities,
                progress=progress,
                total=depth,
            )
            for writer in writers:
                writer.close()
        except BaseException:
            for writer in writers:
                writer.abort()
            for path in overlays:
                Path(path).unlink(missing_ok=True)
            raise
        logger.info("%s: %d slices segmented -> %s", input, depth, label_path)
        return {
            "input": str(input),
            "label": str(label_path),
            "probabilities": [str(path) for path in prob_paths],
            "overlays": sorted(overlays),
            "format": fmt,
            "shape": list(volume.shape),
            "spacing_zyx": None if volume.spacing is None else list(volume.spacing),
            "image_normalization": str(preprocessing),
            "intensity_window": None if window is None else window.as_dict(),
        }


def _num_classes(model: nn.Module, class_names: Sequence[str] | None) -> int:
    head = getattr(model, "head", model)
    if hasattr(head, "num_classes"):
        return int(head.num_classes)
    if class_names:
        return len(class_names) - 1
    raise ValueError("probabilities=True needs class_names or a model with head.num_classes.")


def segment_inputs(
    model: nn.Module,
    input: str | Path | None,
    output_dir: str | Path,
    *,
    datalist: str | Path | None = None,
    split: str | None = None,
    summary_overlay: str | None = "inference_overlay.png",
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Segment every input of :func:`list_inputs` with :func:`segment_volume`; writes ``predictions.json``.

    The intensities are normalised as the model was trained (its preprocessing, ``image_normalization`` of
    ``train.yaml``, recorded with its weights):

    - ``"per_image"``: each slice by its own 0.5/99.5 percentiles.
    - ``"prepared"`` (trained on ``scsam-prepare``'s slices): an input (``input``) is a raw image or volume and is
      normalised with its own per-volume window, measured as ``scsam-prepare`` measures a cell (a 2D image is its
      own volume; no crop or downscale is applied); a datalist split (``datalist`` and ``split``) holds slices
      ``scsam-prepare`` wrote, mapped 0..255 -> 0..1 exactly as training read them
      (:data:`~scsam_monai.data.normalize.PREPARED_SLICE_WINDOW`).

    Args:
        model: the image-to-logits model.
        input: a file, container or folder (see :func:`list_inputs`).
        output_dir: destination folder.
        datalist, split: segment a datalist split instead of ``input``.
        summary_overlay: also copy the first overlay to this name in ``output_dir`` (None: no copy).
        kwargs: passed to :func:`segment_volume`.

    Returns:
        One record per input (see :func:`segment_volume`).
    """
    from_datalist = datalist is not None and bool(split)
    kwargs.setdefault("inputs", "datalist" if from_datalist else "raw")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = [
        segment_volume(model, item, output_dir, **kwargs) for item in list_inputs(input, datalist=datalist, split=split)
    ]
    first = next((r["overlays"][0] for r in records if r["overlays"]), None)
    if summary_overlay and first:
        shutil.copyfile(first, output_dir / summary_overlay)
    atomic_write_json(output_dir / "predictions.json", records)
    return records
