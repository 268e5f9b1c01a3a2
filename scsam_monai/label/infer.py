"""MONAI Label inference task: the bundle's image-in ScSAM on one image or stack, slice by slice.

The Model Zoo bundle also serves through MONAI Label's stock ``BundleInferTask`` (``inference.yaml`` stands alone;
see ``docs/monai_label.md``). This task is our app's: it checks every upload with the package's readers (answers
415/422 naming the problem instead of a 500), reads 2D/3D EM files of every format the bundle reads, and reloads
the head whenever the app's training replaces it. It builds the network from the bundle's configs
(:func:`~scsam_monai.label.bundle.build_network`), loads the head weights with
:func:`~scsam_monai.networks.checkpoints.load_head_weights` (refusing a head trained with another
``image_normalization``) and runs :func:`~scsam_monai.engines.volume_inference.segment_slices`, the code of the
bundle's inference workflow.

The label map comes back in the geometry (spacing, origin, direction) that ITK, 3D Slicer's reader, gives the
input, so that it lies on the image in Slicer; NIfTI (``.nii.gz``) by default.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..data.normalize import measure_volume_window
from ..data.readers import open_volume
from ..engines.volume_inference import segment_slices
from ..networks.checkpoints import load_head_weights
from .bundle import BundleSettings, build_network
from .uploads import UploadRejected, check_image

__all__ = ["ScSAMInferTask", "write_label"]

logger = logging.getLogger(__name__)

RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".tif")
"""Formats the label map can be returned in (request parameter ``result_extension``)."""


def write_label(label: np.ndarray, reference: str | Path, path: str | Path, spacing_zyx: Any = None) -> Path:
    """Write a label map ``(Z, H, W)`` with the geometry ITK reads from ``reference`` (the segmented image).

    When ITK cannot read ``reference`` as a scalar image of the same grid (an RGB-looking TIFF, a format it does
    not know), the label map gets ITK's default geometry for such files: origin 0, identity direction and the
    spacing ``spacing_zyx`` (or 1).

    Args:
        label: the label map ``(Z, H, W)``, ``Z`` = 1 for a 2D image.
        reference: the input image file.
        path: output file; its suffix picks the format (``.nii.gz``, ``.nrrd``, ``.mha``, ``.tif``).
        spacing_zyx: fallback voxel size ``(z, y, x)``, entries may be None.
    """
    import itk

    path = Path(path)
    squeezed = label[0] if label.shape[0] == 1 else label
    image = None
    try:
        ref = itk.imread(str(reference))
        ref_shape = tuple(itk.size(ref))[::-1]
        if ref.GetNumberOfComponentsPerPixel() == 1 and int(np.prod(ref_shape)) == label.size:
            image = itk.image_from_array(np.ascontiguousarray(label.reshape(ref_shape)))
            image.CopyInformation(ref)
    except Exception as err:  # noqa: BLE001 - any reader failure falls back to the default geometry
        logger.info(f"{reference}: ITK cannot give the geometry ({type(err).__name__}: {err}); using defaults.")
    if image is None:
        image = itk.image_from_array(np.ascontiguousarray(squeezed))
        zyx = [s if s else 1.0 for s in (spacing_zyx or ())][-squeezed.ndim :]
        if len(zyx) == squeezed.ndim:
            image.SetSpacing([float(s) for s in zyx[::-1]])
    itk.imwrite(image, str(path), compression=True)
    return path


def http_error(err: UploadRejected) -> HTTPException:
    """The FastAPI answer for a rejected file."""
    return HTTPException(status_code=err.status_code, detail=err.message)


class ScSAMInferTask(InferTask):
    """Segment an image or a stack with the bundle's ScSAM (frozen encoders + the trained head in ``model_dir``).

    Args:
        settings: the bundle and its overrides.
        model_path: the trained head's weights (``model.pt``, written by the train task).
        description: shown by MONAI Label clients.
        batch_size: slices per model call (None: 8 on a GPU, 1 on a CPU).
    """

    def __init__(
        self,
        settings: BundleSettings,
        model_path: str | Path,
        *,
        description: str = "ScSAM: nucleus, mitochondria and granules in EM slices",
        batch_size: int | None = None,
    ) -> None:
        self.settings = settings
        self.model_path = Path(model_path)
        self.batch_size = batch_size
        self.class_names = settings.class_names()
        self.image_normalization = settings.parser("train.yaml").get_parsed_content("image_normalization")
        labels = {name: value for value, name in enumerate(self.class_names) if value > 0}
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=2,
            description=description,
            config={"result_extension": RESULT_EXTENSIONS[0]},
        )
        self._network = None
        self._loaded: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.model_path) if (self.model_path.is_file() or not validate) else None

    def _model(self):
        """The network, with the head weights of ``model_path`` reloaded whenever the file changed."""
        if not self.model_path.is_file():
            raise HTTPException(
                status_code=409,
                detail=f"No trained ScSAM head at {self.model_path}: train one first (POST /train/<model>) or start "
                "the server with --conf head_checkpoint PATH.",
            )
        if self._network is None:
            self._network = build_network(self.settings)
        stat = self.model_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._loaded:
            try:
                load_head_weights(self._network.head, self.model_path)
            except ValueError as err:
                raise HTTPException(status_code=409, detail=str(err)) from err
            self._loaded = stamp
            logger.info(f"Loaded ScSAM head weights from {self.model_path}")
        return self._network

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, (str, Path)) or not str(image):
            raise HTTPException(status_code=404, detail=f"Image {request.get('image')!r} not found in the datastore.")
        path = Path(image)
        name = path.name
        if not path.exists():
            raise HTTPException(status_code=404, detail=f"Image {name} not found.")
        extension = request.get("result_extension") or RESULT_EXTENSIONS[0]
        if extension not in RESULT_EXTENSIONS:
            raise HTTPException(
                status_code=422, detail=f"result_extension {extension!r}: choose one of {', '.join(RESULT_EXTENSIONS)}."
            )
        start = time.time()
        try:
            shape = check_image(path, name=name)
        except UploadRejected as err:
            raise http_error(err) from err
        checked = time.time()
        with self._lock:
            network = self._model()
            label = np.zeros(shape, dtype=np.uint8)

            def write(index: int, plane: np.ndarray) -> None:
                label[index] = plane

            with open_volume(path) as volume:
                spacing = volume.spacing
                # prepared: the volume's own window, measured as scsam-prepare measures a cell's (2D: the image's)
                window = measure_volume_window(volume) if self.image_normalization == "prepared" else None
                segment_slices(
                    network,
                    (volume.read_slice(z) for z in range(volume.shape[0])),
                    writer=write,
                    image_normalization=self.image_normalization,
                    window=window,
                    batch_size=self.batch_size,
                    progress=False,
                    total=volume.shape[0],
                )
        inferred = time.time()
        out = Path(tempfile.NamedTemporaryFile(suffix=extension, delete=False).name)
        write_label(label, path, out, spacing)
        done = time.time()
        params = {
            "label_names": {n: v for v, n in enumerate(self.class_names)},
            "shape": list(shape),
            "classes_found": [int(v) for v in np.unique(label)],
            "latencies": {
                "check": round(checked - start, 3),
                "infer": round(inferred - checked, 3),
                "write": round(done - inferred, 3),
                "total": round(done - start, 3),
            },
        }
        logger.info(f"Segmented {name} {shape} in {done - start:.2f} s -> {out}")
        return str(out), params
