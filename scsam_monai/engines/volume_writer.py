"""Segment images and volumes of any size from the command line: inputs, slice-by-slice writers, overlays.

:func:`segment_inputs` is what ``bundle/configs/inference.yaml`` runs. It lists the inputs (a 2D image, a 3D stack,
an N5/Zarr container, or a folder of them), opens each with :func:`~scsam_monai.data.io.open_volume`, feeds its
slices lazily to :func:`~scsam_monai.engines.volume_inference.segment_slices` and writes every label map as it
comes out, so that neither the volume nor its segmentation is ever held whole:

- TIFF stacks through tifffile's incremental writer (ImageJ hyperstack with the input's spacing),
- HDF5 datasets (h5py, chunked one slice per chunk, ``element_size_um``),
- Zarr (OME-Zarr ``multiscales`` scale) and N5 (``pixelResolution``) arrays through tensorstore,
- PNG for 2D PNG/JPEG/BMP images,
- NIfTI on request (``output_format="nifti"``, and for NIfTI/MHA/NRRD inputs): the slices go to a memory-mapped
  array on disk which nibabel then writes out, so memory stays bounded there too (disk holds one copy).

Label maps are ``uint8`` (0 background, 1..C classes). Optional per-class probability maps (float32, one file
per class, same format) and overlay PNGs (image | label map) of chosen slices.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.io import IMAGE_SUFFIXES, Volume, open_volume
from .volume_inference import segment_slices

__all__ = [
    "OUTPUT_FORMATS",
    "list_inputs",
    "output_format_for",
    "open_writer",
    "write_overlay",
    "segment_volume",
    "segment_inputs",
]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("tiff", "hdf5", "zarr", "n5", "png", "nifti")
"""Formats label maps can be written in."""

_VOLUME_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
_EXTENSIONS = {"tiff": ".tif", "hdf5": ".h5", "zarr": ".zarr", "n5": ".n5", "png": ".png", "nifti": ".nii.gz"}
_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]],
    dtype=np.uint8,
)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: str | Path) -> str:
    name = Path(str(path).rstrip("/")).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _is_container(path: Path) -> bool:
    markers = (".zarray", ".zgroup", ".zattrs", "zarr.json", "attributes.json")
    return path.suffix.lower() in (".zarr", ".n5") or any((path / m).is_file() for m in markers)


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
        from .inference import image_list

        return [item["image"] for item in image_list(None, datalist=datalist, split=split)]
    if input is None:
        raise ValueError("Name what to segment: --input PATH (an image, a stack, a container or a folder).")
    text = str(input)
    if "://" in text:
        return [text]
    root = Path(text)
    if not root.exists():
        raise FileNotFoundError(f"{root}: input not found.")
    if root.is_file() or _is_container(root):
        return [str(root)]
    found = [
        str(p)
        for p in sorted(root.iterdir())
        if not p.name.startswith(".")
        and ((p.is_file() and _suffix(p) in IMAGE_SUFFIXES + _VOLUME_SUFFIXES) or (p.is_dir() and _is_container(p)))
    ]
    if not found:
        raise ValueError(f"{root}: no image, stack or container to segment in this folder.")
    return found


def output_format_for(path: str | Path, volume: Volume, requested: str | None = None) -> str:
    """Format of the label map of ``path``: ``requested`` when given, else the input's own (NIfTI for MONAI-read
    formats, TIFF for per-slice stacks, PNG for 2D PNG/JPEG/BMP)."""
    if requested:
        requested = requested.lower().replace("nii", "nifti").replace("niftifti", "nifti")
        if requested in ("tif", "ome-tiff"):
            requested = "tiff"
        if requested not in OUTPUT_FORMATS:
            raise ValueError(f"Unknown output format {requested!r}; choose one of {OUTPUT_FORMATS}.")
        return requested
    fmt = volume.format
    if fmt in ("tiff", "hdf5", "zarr", "n5"):
        return fmt
    if fmt == "png" or (fmt == "stack" and volume.shape[0] == 1):
        return "png"
    if fmt == "monai":
        return "nifti"
    return "tiff"


def _spacing(volume: Volume) -> tuple[float, float, float]:
    spacing = volume.spacing or (None, None, None)
    return tuple(1.0 if s is None else float(s) for s in spacing)  # type: ignore[return-value]


class _SliceWriter:
    """Writes the slices of one ``(Z, Y, X)`` array in order; ``close()`` finishes the file."""

    def __init__(self, path: Path, shape: Sequence[int], dtype: np.dtype, volume: Volume) -> None:
        self.path, self.shape, self.dtype, self.volume = path, tuple(shape), np.dtype(dtype), volume
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, plane: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TiffWriter(_SliceWriter):
    """tifffile writes an ImageJ stack from an iterator of pages (with the stack's shape given up front); the pages
    reach it through a small queue, from a writer thread, so only a few slices are held at a time."""

    def __init__(self, *args) -> None:
        import tifffile

        super().__init__(*args)
        z, y, x = _spacing(self.volume)
        unit = self.volume.unit or "pixel"
        unit = "micron" if unit in ("µm", "μm", "um") else unit.encode("ascii", "replace").decode()
        imagej = self.dtype in (np.uint8, np.uint16, np.float32)
        kwargs: dict[str, Any] = {"shape": self.shape, "dtype": self.dtype, "resolution": (1.0 / x, 1.0 / y)}
        kwargs["metadata"] = {"axes": "ZYX", "spacing": z, "unit": unit} if imagej else None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._written = 0

        def pages():
            for _ in range(self.shape[0]):
                yield self._queue.get()

        def run() -> None:
            try:
                with tifffile.TiffWriter(self.path, imagej=imagej) as tif:
                    tif.write(pages(), **kwargs)
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread by write/close
                self._error = err

        self._thread = threading.Thread(target=run, name=f"tiff-writer-{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, index: int, plane: np.ndarray) -> None:
        while self._error is None:
            try:
                self._queue.put(np.ascontiguousarray(plane, dtype=self.dtype), timeout=0.1)
                self._written += 1
                return
            except queue.Full:
                continue
        raise RuntimeError(f"{self.path}: writing the TIFF stack failed: {self._error}") from self._error

    def close(self) -> None:
        if self._written < self.shape[0] and self._error is None:
            # an interrupted run: give the writer thread blank pages so that it finishes the file
            for _ in range(self.shape[0] - self._written):
                self._queue.put(np.zeros(self.shape[1:], self.dtype))
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"{self.path}: writing the TIFF stack failed: {self._error}") from self._error


class _PngWriter(_SliceWriter):
    def write(self, index: int, plane: np.ndarray) -> None:
        from PIL import Image

        if self.dtype.kind == "f":  # probabilities as 8-bit greyscale
            plane = np.clip(np.rint(plane * 255), 0, 255).astype(np.uint8)
        path = self.path if self.shape[0] == 1 else self.path.with_name(f"{self.path.stem}_z{index:05d}.png")
        Image.fromarray(plane.astype(np.uint8, copy=False)).save(path)


class _Hdf5Writer(_SliceWriter):
    def __init__(self, *args, key: str = "label") -> None:
        import h5py

        super().__init__(*args)
        self._file = h5py.File(self.path, "w")
        chunks = (1, *self.shape[1:])
        self._data = self._file.create_dataset(
            key, shape=self.shape, dtype=self.dtype, chunks=chunks, compression="gzip"
        )
        self._data.attrs["element_size_um"] = list(_spacing(self.volume))
        if self.volume.unit:
            self._data.attrs["unit"] = self.volume.unit

    def write(self, index: int, plane: np.ndarray) -> None:
        self._data[index] = plane

    def close(self) -> None:
        self._file.close()


class _TensorstoreWriter(_SliceWriter):
    def __init__(self, *args, driver: str) -> None:
        import tensorstore as ts

        super().__init__(*args)
        if self.path.exists():
            shutil.rmtree(self.path)
        z, y, x = _spacing(self.volume)
        unit = self.volume.unit or "pixel"
        if driver == "n5":
            # N5 lists dimensions fastest first (x, y, z); tensorstore presents them in that order
            spec = {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": str(self.path)},
                "metadata": {
                    "dimensions": list(self.shape[::-1]),
                    "blockSize": [self.shape[2], self.shape[1], 1],
                    "dataType": self.dtype.name,
                    "compression": {"type": "gzip"},
                },
                "create": True,
            }
            self._reverse = True
        else:
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "file", "path": str(self.path / "0")},
                "metadata": {"shape": list(self.shape), "chunks": [1, *self.shape[1:]], "dtype": self.dtype.str},
                "create": True,
            }
            self._reverse = False
        self._array = ts.open(spec).result()
        if driver == "n5":
            attrs_path = self.path / "attributes.json"
            attrs = json.loads(attrs_path.read_text())
            attrs.update({"pixelResolution": {"dimensions": [x, y, z], "unit": unit}, "resolution": [x, y, z]})
            attrs_path.write_text(json.dumps(attrs))
        else:
            (self.path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
            axes = [{"name": n, "type": "space", **({"unit": unit} if unit != "pixel" else {})} for n in "zyx"]
            multiscales = [
                {
                    "version": "0.4",
                    "axes": axes,
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [z, y, x]}]}],
                }
            ]
            (self.path / ".zattrs").write_text(json.dumps({"multiscales": multiscales}))

    def write(self, index: int, plane: np.ndarray) -> None:
        plane = plane.astype(self.dtype, copy=False)
        if self._reverse:
            self._array[:, :, index].write(plane.T).result()
        else:
            self._array[index].write(plane).result()


class _NiftiWriter(_SliceWriter):
    """Slices go to a memory-mapped ``.npy`` next to the output; nibabel writes it out on ``close()``."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        fd, name = tempfile.mkstemp(suffix=".npy", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(name)
        self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=self.dtype, shape=self.shape)

    def write(self, index: int, plane: np.ndarray) -> None:
        self._array[index] = plane

    def close(self) -> None:
        import nibabel as nib

        try:
            self._array.flush()
            z, y, x = _spacing(self.volume)
            # NIfTI stores (x, y, z): the transposed view of the memory map, written by nibabel in slabs
            image = nib.Nifti1Image(self._array.T, np.diag([x, y, z, 1.0]))
            image.header.set_zooms((x, y, z))
            nib.save(image, self.path)
        finally:
            del self._array
            self._tmp.unlink(missing_ok=True)


def open_writer(
    path: str | Path, fmt: str, shape: Sequence[int], dtype: np.dtype | str, volume: Volume
) -> _SliceWriter:
    """A writer of the ``(Z, Y, X)`` array ``shape`` at ``path`` in format ``fmt`` (see :data:`OUTPUT_FORMATS`),
    with the spacing of ``volume``; call ``write(index, plane)`` for every slice in order, then ``close()``."""
    path = Path(path)
    if fmt == "tiff":
        return _TiffWriter(path, shape, np.dtype(dtype), volume)
    if fmt == "png":
        return _PngWriter(path, shape, np.dtype(dtype), volume)
    if fmt == "hdf5":
        return _Hdf5Writer(path, shape, np.dtype(dtype), volume)
    if fmt in ("zarr", "n5"):
        return _TensorstoreWriter(path, shape, np.dtype(dtype), volume, driver=fmt)
    if fmt == "nifti":
        return _NiftiWriter(path, shape, np.dtype(dtype), volume)
    raise ValueError(f"Unknown output format {fmt!r}; choose one of {OUTPUT_FORMATS}.")


def write_overlay(path: str | Path, image: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> Path:
    """PNG of an image slice next to the same slice with its label map blended in colour (image | overlay)."""
    from PIL import Image

    from .volume_inference import normalize_slice

    grey = (normalize_slice(image)[0].numpy() * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colours = _COLOURS[np.asarray(label, dtype=np.int64) % len(_COLOURS)]
    mask = (np.asarray(label) > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb, blended], axis=1)).save(path)
    return path


class _ProbabilityCapture(nn.Module):
    """Runs the model and keeps the last batch's per-class sigmoid probabilities for the writers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.start = 0
        self.seen = 0
        self.probabilities: np.ndarray | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        self.probabilities = torch.sigmoid(logits.float()).cpu().numpy()
        self.start, self.seen = self.seen, self.seen + len(images)
        return logits


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
    threshold: float = 0.5,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment one image or volume slice by slice (along z) and write its label map as the slices come.

    Args:
        model: image-to-logits model (the bundle's ``ScSAM``), ``(B, 1, H, W)`` in [0, 1] -> ``(B, C, H, W)``.
        input: what :func:`~scsam_monai.data.io.open_volume` opens (file, container, URL).
        output_dir: destination folder.
        key: dataset inside an HDF5 file / array inside an N5 or Zarr container.
        output_format: one of :data:`OUTPUT_FORMATS`; None for the input's own format.
        class_names: names of label values 0..C (probability files are named after classes 1..C).
        probabilities: also write the per-class sigmoid probabilities, float32, ``<stem>_prob_<class>``.
        overlay_slices: slice indices for overlay PNGs ``<stem>_overlay_z<index>.png``; ``"middle"`` for the
            middle slice, None or ``[]`` for none.
        suffix: appended to the input's name for the label map.
        batch_size, device, amp, threshold, progress: as :func:`segment_slices`.

    Returns:
        ``{"input", "label", "probabilities", "overlays", "format", "shape", "spacing_zyx"}`` (paths as strings).
    """
    output_dir = Path(output_dir)
    stem = _stem(input)
    with open_volume(input, key) as volume:
        fmt = output_format_for(input, volume, output_format)
        ext = _EXTENSIONS[fmt]
        depth = volume.shape[0]
        label_path = output_dir / f"{stem}{suffix}{ext}"
        label_writer = open_writer(label_path, fmt, volume.shape, np.uint8, volume)
        if overlay_slices == "middle":
            overlay_slices = [depth // 2]
        chosen = sorted({int(i) for i in (overlay_slices or []) if 0 <= int(i) < depth})
        overlays: list[str] = []
        runner: nn.Module = _ProbabilityCapture(model) if probabilities else model
        prob_writers: list[_SliceWriter] = []
        prob_paths: list[str] = []
        if probabilities:
            num_classes = _num_classes(model, class_names)
            names = list(class_names[1:]) if class_names else [f"class{c + 1}" for c in range(num_classes)]
            for name in names:
                path = output_dir / f"{stem}_prob_{name}{ext}"
                prob_writers.append(open_writer(path, fmt, volume.shape, np.float32, volume))
                prob_paths.append(str(path))

        def write(index: int, label: np.ndarray) -> None:
            label_writer.write(index, label)
            if prob_writers:
                probs = runner.probabilities[index - runner.start]  # type: ignore[index, operator]
                for c, writer in enumerate(prob_writers):
                    writer.write(index, probs[c])
            if index in chosen:
                path = output_dir / f"{stem}_overlay_z{index:05d}.png"
                overlays.append(str(write_overlay(path, volume.read_slice(index), label)))

        try:
            segment_slices(
                runner,
                (volume.read_slice(i) for i in range(depth)),
                writer=write,
                batch_size=batch_size,
                device=device,
                amp=amp,
                threshold=threshold,
                progress=progress,
                total=depth,
            )
        finally:
            for writer in (label_writer, *prob_writers):
                writer.close()
        logger.info("%s: %d slices segmented -> %s", input, depth, label_path)
        return {
            "input": str(input),
            "label": str(label_path),
            "probabilities": prob_paths,
            "overlays": overlays,
            "format": fmt,
            "shape": list(volume.shape),
            "spacing_zyx": None if volume.spacing is None else list(volume.spacing),
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
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = [
        segment_volume(model, item, output_dir, **kwargs) for item in list_inputs(input, datalist=datalist, split=split)
    ]
    first = next((r["overlays"][0] for r in records if r["overlays"]), None)
    if summary_overlay and first:
        shutil.copyfile(first, output_dir / summary_overlay)
    (output_dir / "predictions.json").write_text(json.dumps(records, indent=2))
    return records
