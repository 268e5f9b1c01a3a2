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
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scsam_monai.atomic import atomic_write, atomic_write_json
from scsam_monai.data.normalize import IntensityWindow
from scsam_monai.data.pixel_size import input_pixel_size as input_pixel_size_of
from scsam_monai.data.preprocessing import ImagePreprocessing
from scsam_monai.engines.ranks import RankFailure, Ranks, slice_groups, weights_digest
from scsam_monai.engines.tiling import Tiling
from scsam_monai.engines.volume_inference import segment_slices, volume_slices
from scsam_monai.io.formats import (
    IMAGE_SUFFIXES,
    OUTPUT_SUFFIXES,
    VOLUME_SUFFIXES,
    file_stem,
    file_suffix,
    is_container,
)
from scsam_monai.io.readers import Volume, open_volume
from scsam_monai.io.roi import crop_volume, parse_roi
from scsam_monai.io.writers import SliceWriter, open_writer, output_format_for
from scsam_monai.io.writers.base import spacing_zyx
from scsam_monai.io.writers.ome_zarr_store import OmeZarrLabelStore
from scsam_monai.palette import overlay_rgb8

__all__ = ["list_inputs", "placement", "write_overlay", "segment_volume", "segment_inputs"]

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
        datalist: MONAI datalist JSON; with ``split`` its split's images are segmented when ``input`` is None.
        split: datalist key, e.g. ``test``.

    An ``input`` always wins over a datalist split (an overlay such as ``demo.yaml`` sets ``infer_split``; the
    path given on the command line is what the user asked for): the log says that the split is left alone.

    Raises:
        FileNotFoundError / ValueError: with the path, when nothing can be found.
    """
    if input is not None and datalist is not None and split:
        logger.info("Segmenting --input %s; the datalist's %r split (infer_split) is not segmented.", input, split)
    elif datalist is not None and split:
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
    input_pixel_size: float | None = None,
    tile_overlap: float = 0.5,
    roi: str | Sequence | None = None,
    ranks: Ranks | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """Segment one image or volume slice by slice (along z) and write its label map as the slices come.

    The slices are normalised as the model's preprocessing says (``model.preprocessing``, recorded with its
    weights); for ``prepared``, a raw input is read twice: once to measure its intensity window (as
    ``scsam-prepare`` measures a cell), once to segment it. A model that records its pixel size segments every
    slice at that size (see :func:`placement`): resampled from the input's pixel size, tiled when larger than the
    canvas, labels written on the input's grid.

    Outputs: ``zarr`` is one OME-Zarr store with a pyramid (:class:`~scsam_monai.io.writers.ome_zarr_store.
    OmeZarrLabelStore`) that several ranks write together and a rerun of the same command resumes (completed
    slices are skipped; other weights, preprocessing, pixel size or tiling are refused). Every other format is
    written by one process, atomically (see :class:`~scsam_monai.io.writers.SliceWriter`): when a read, the model
    or a write fails, the partial label map, probability maps and overlays of this input are removed.

    Args:
        model: image-to-logits model (the bundle's ``ScSAM``), ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1 + C, H, W)``.
        input: what :func:`~scsam_monai.io.readers.open_volume` opens (file, container, URL).
        output_dir: destination folder.
        key: dataset inside an HDF5 file / array inside an N5 or Zarr container.
        output_format: one of :data:`~scsam_monai.io.formats.OUTPUT_FORMATS`; None for the input's format.
        class_names: names of label values 0..C (probability files are named after classes 1..C).
        probabilities: also write the per-class sigmoid probabilities (float32): ``<stem>_prob_<class>`` files,
            or arrays ``probabilities/<class>`` inside an OME-Zarr store.
        overlay_slices: slice indices for overlay PNGs ``<stem>_overlay_z<index>.png``; ``"middle"`` for the
            middle slice, None or ``[]`` for none.
        suffix: appended to the input's name for the label map.
        batch_size: slices per model call (tiles per model call when tiled).
        device, amp, amp_dtype, threshold, progress: as
            :func:`~scsam_monai.engines.volume_inference.segment_slices`.
        inputs: ``"raw"`` (a file given to inference) or ``"datalist"`` (a datalist's item: for ``prepared``, a
            slice ``scsam-prepare`` wrote), see :meth:`~scsam_monai.data.preprocessing.ImagePreprocessing.window`.
        window: a known intensity window for ``"prepared"`` (None: as ``inputs`` says).
        input_pixel_size: the input's pixel size in nm (None: its metadata's).
        tile_overlap: fraction of a tile its neighbours share.
        roi: ``"z0:z1,y0:y1,x0:x1"``: segment only this region (:func:`~scsam_monai.io.roi.parse_roi`).
        ranks: the ranks sharing the work (None: this process alone).
        weights: digest of the model's weights (:func:`~scsam_monai.engines.ranks.weights_digest`; computed
            when None), recorded in a store so that a rerun with other weights is refused.

    Returns:
        ``{"input", "roi", "label", "probabilities", "overlays", "format", "shape", "spacing_zyx",
        "image_normalization", "intensity_window", "pixel_size", "tiling", "ranks", "seconds"}``.
    """
    started = time.perf_counter()
    ranks = ranks or Ranks()
    output_dir = Path(output_dir)
    stem = file_stem(input)
    region = parse_roi(roi)
    with open_volume(input, key) as whole:
        volume, offset = crop_volume(whole, region) if region is not None else (whole, (0, 0, 0))
        fmt = output_format_for(input, volume, output_format)
        if ranks.world > 1 and fmt != "zarr":
            raise ValueError(
                f"{input}: {ranks.world} ranks write one output only as an OME-Zarr store (each rank its own chunks); "
                f"add --output_format zarr (asked for: {fmt})."
            )
        ext = OUTPUT_SUFFIXES[fmt]
        depth = volume.shape[0]
        preprocessing = ImagePreprocessing.of_model(model)
        window = preprocessing.window(volume, window, inputs=inputs)
        if window is not None and ranks.main:
            logger.info("%s: intensity window %.6g..%.6g (%s)", input, window.low, window.high, window.method)
        tiling, scale, pixel_record = placement(model, volume, input_pixel_size, tile_overlap, batch_size)
        if overlay_slices == "middle":
            overlay_slices = [depth // 2]
        chosen = {int(i) for i in (overlay_slices or []) if 0 <= int(i) < depth}
        names: list[str] = []
        if probabilities:
            num_classes = _num_classes(model, class_names)
            names = list(class_names[1:]) if class_names else [f"class{c + 1}" for c in range(num_classes)]
        label_path = output_dir / f"{stem}{suffix}{ext}"
        options = dict(
            batch_size=batch_size,
            device=device,
            amp=amp,
            amp_dtype=amp_dtype,
            threshold=threshold,
            preprocessing=preprocessing,
            window=window,
            probabilities=probabilities,
            tiling=tiling,
            scale=scale,
        )
        identity = {
            "input": volume.source,
            "weights": weights or weights_digest(model),
            "image_normalization": str(preprocessing),
            "intensity_window": None if window is None else window.as_dict(),
            "pixel_size": pixel_record,
            "tiling": None if tiling is None else tiling.as_dict(),
            "threshold": threshold,
        }

        def overlay_path(index: int) -> Path:
            return output_dir / f"{stem}_overlay_z{index:05d}.png"

        if fmt == "zarr":
            written = _segment_into_store(
                model,
                volume,
                label_path,
                overlay_path,
                offset,
                identity,
                names,
                chosen,
                class_names,
                ranks,
                progress,
                options,
            )
            prob_paths = [f"{label_path}/probabilities/{name}" for name in names]
        else:
            prob_paths = [str(output_dir / f"{stem}_prob_{name}{ext}") for name in names]
            written = _segment_into_files(
                model, volume, label_path, prob_paths, overlay_path, fmt, chosen, progress, options
            )
        overlays = sorted(str(overlay_path(i)) for i in chosen if overlay_path(i).is_file())
        if ranks.main:
            logger.info("%s: %d slices segmented -> %s", volume.source, written, label_path)
        return {
            "input": str(input),
            "roi": None if region is None else [[r.start or 0, r.stop] for r in region],
            "label": str(label_path),
            "probabilities": prob_paths,
            "overlays": overlays,
            "format": fmt,
            "shape": list(volume.shape),
            "spacing_zyx": None if volume.spacing is None else list(volume.spacing),
            "image_normalization": str(preprocessing),
            "intensity_window": None if window is None else window.as_dict(),
            "pixel_size": pixel_record,
            "tiling": None if tiling is None else tiling.as_dict(),
            "ranks": ranks.world,
            "seconds": round(time.perf_counter() - started, 3),
        }


def placement(
    model: nn.Module, volume: Volume, input_pixel_size: float | None, overlap: float, batch_size: int
) -> tuple[Tiling | None, float, dict[str, Any]]:
    """How the slices of ``volume`` reach the model's canvas: ``(tiling or None, scale, record)``.

    - Weights that record their pixel size (training knew the data's): every slice is resampled by
      ``scale`` = input pixel size / model pixel size and tiled when larger than the canvas. An input without a
      pixel size (and no ``input_pixel_size``) is taken to be at the model's, with a warning naming it.
    - Weights without one: ``tiling`` None, every slice resized onto the canvas as training did, with a warning.

    ``record`` (for ``predictions.json`` and the store's identity) holds the model's and the input's pixel sizes
    (nm), where the input's came from, and the scale.
    """
    model_size = ImagePreprocessing.of_model(model).pixel_size
    input_size, how = input_pixel_size_of(volume, input_pixel_size)
    record: dict[str, Any] = {"model": model_size, "input": input_size, "input_from": how, "scale": None}
    if model_size is None:
        logger.warning(
            "%s: the model's weights record no pixel size (trained without one): every slice is resized so that "
            "its longest side fills the canvas, as before. Train with --pixel_size (or on scsam-prepare's "
            "datalist) to segment at the model's pixel size.",
            volume.source,
        )
        return None, 1.0, record
    if input_size is None:
        logger.warning(
            "%s: %s; assuming the model's pixel size, %.4g nm (give --input_pixel_size to resample it).",
            volume.source,
            how,
            model_size,
        )
        input_size = model_size
    scale = input_size / model_size
    record["scale"] = scale
    canvas = int(model.canvas_size)
    tiling = Tiling(tile_size=canvas, overlap=overlap, batch_size=batch_size)
    logger.info(
        "%s: %.4g nm per pixel (%s), model %.4g nm: slices resampled by %.4g, tiles of %d pixels.",
        volume.source,
        input_size,
        how,
        model_size,
        scale,
        canvas,
    )
    return tiling, scale, record


def _segment_into_files(
    model: nn.Module,
    volume: Volume,
    label_path: Path,
    prob_paths: list[str],
    overlay_path: Callable[[int], Path],
    fmt: str,
    chosen: set[int],
    progress: bool,
    options: dict[str, Any],
) -> int:
    """One process writes the label map (and probability files) atomically, slice by slice."""
    kept: dict[int, np.ndarray] = {}  # raw slices of the overlays, from the reader thread to the writer thread
    overlays: list[str] = []
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
            overlays.append(str(write_overlay(overlay_path(index), kept.pop(index), label)))

    try:
        writers.append(open_writer(label_path, fmt, volume.shape, np.uint8, volume))
        writers.extend(open_writer(path, fmt, volume.shape, np.float32, volume) for path in prob_paths)
        written = segment_slices(model, slices(), writer=write, progress=progress, total=volume.shape[0], **options)
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        for path in overlays:
            Path(path).unlink(missing_ok=True)
        raise
    return written


def _segment_into_store(
    model: nn.Module,
    volume: Volume,
    label_path: Path,
    overlay_path: Callable[[int], Path],
    offset: tuple[int, int, int],
    identity: dict[str, Any],
    names: list[str],
    chosen: set[int],
    class_names: Sequence[str] | None,
    ranks: Ranks,
    progress: bool,
    options: dict[str, Any],
) -> int:
    """The ranks write one OME-Zarr store, each its share of the slice groups; completed slices are skipped."""
    spacing = spacing_zyx(volume)
    labels = list(class_names or ["background", *[f"class{c + 1}" for c in range(_num_classes(model, None))]])
    store = OmeZarrLabelStore.open(
        label_path,
        shape_zyx=volume.shape,
        spacing_zyx=spacing,
        unit=volume.unit,
        translation_zyx=None if not any(offset) else tuple(o * s for o, s in zip(offset, spacing, strict=True)),
        class_names=labels,
        run=identity,
        probabilities=bool(names),
        rank=ranks.rank,
        world_size=ranks.world,
        barrier=ranks.barrier,
    )
    failure = RankFailure(label_path, ranks)
    if ranks.main:
        failure.clear()
    ranks.barrier()
    done = store.completed()
    # one model batch per group; tiled slices go one per group (their tiles are batched), which evens the shares
    per_group = 1 if options["tiling"] is not None else options["batch_size"]
    groups = [g for g in slice_groups(volume.shape[0], per_group) if any(i not in done for i in g)]
    pending = sum(1 for g in groups for i in g if i not in done)
    if done and ranks.main:
        logger.info(
            "%s: resuming: %d of %d slices are done, %d to go.", label_path, len(done), volume.shape[0], pending
        )
    mine = ranks.share(groups)
    kept_indices = {i for g in mine for i in g if i in chosen}

    def write(index: int, label: np.ndarray, probs: np.ndarray | None = None) -> None:
        failure.check()
        if index in done:  # computed with its group (same batch as the first run), already in the store
            return
        store.write_slice(index, label, probs)
        if index in kept_indices:
            write_overlay(overlay_path(index), volume.read_slice(index), label)

    def count() -> int:
        return len(store.completed()) - len(done)

    try:
        segment_slices(
            model,
            volume,
            writer=write,
            groups=mine,
            progress=progress and ranks.main,
            total=pending,
            progress_count=count if ranks.world > 1 else None,
            **options,
        )
    except BaseException as err:
        failure.record(err)
        raise
    ranks.barrier()
    if ranks.main:
        store.finish()
    return pending


def _num_classes(model: nn.Module, class_names: Sequence[str] | None) -> int:
    """The number of classes C (label values 1..C): the head's, the names', or one small call's logits."""
    head = getattr(model, "head", model)
    if hasattr(head, "num_classes"):
        return int(head.num_classes)
    if class_names:
        return len(class_names) - 1
    parameter = next(iter(model.parameters()), None)
    probe = torch.zeros((1, 1, 32, 32), device=None if parameter is None else parameter.device)
    with torch.inference_mode():
        return int(model(probe).shape[1]) - 1


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
    from_datalist = input is None and datalist is not None and bool(split)
    kwargs.setdefault("inputs", "datalist" if from_datalist else "raw")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    items = list_inputs(input, datalist=datalist, split=split)
    ranks = Ranks.join()
    device = ranks.device(kwargs.get("device"))
    if device is not None:
        model.to(device)
        kwargs["device"] = device
    weights = weights_digest(model)
    model_record = {
        "weights_sha256_16": weights,
        "image_normalization": str(ImagePreprocessing.of_model(model)),
        "pixel_size": ImagePreprocessing.of_model(model).pixel_size,
        "canvas": getattr(model, "canvas_size", None),
    }
    records = [
        {**segment_volume(model, item, output_dir, ranks=ranks, weights=weights, **kwargs), "model": model_record}
        for item in items
    ]
    if ranks.main:
        first = next((r["overlays"][0] for r in records if r["overlays"]), None)
        if summary_overlay and first:
            shutil.copyfile(first, output_dir / summary_overlay)
        atomic_write_json(output_dir / "predictions.json", records)
    ranks.leave()  # not on failure: a failed rank leaves without the closing barrier, and torchrun stops the others
    return records
