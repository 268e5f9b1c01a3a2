"""MONAI Label inference task: MONAI Label's ``BundleInferTask`` on the bundle, segmenting slice by slice.

:class:`ScSAMInferTask` is a ``BundleInferTask`` (``monailabel.tasks.infer.bundle``), as the stock ``monaibundle``
and ``vista2d`` sample apps serve their bundles: it reads the bundle's ``inference.yaml`` (laid over ``train.yaml``
with the app's overlays and overrides), builds ``network_def`` (the image-in ScSAM whose state dict is the trained
head's), and ``BasicInferTask`` runs the request (pre-transforms, inferer, post-transforms, writer), keeps one
network per device and reloads the head whenever its file changes. What ScSAM needs on top of that:

- the head is the app's served one (``<model_dir>/model.pt``, replaced by training), not the bundle's
  ``models/model.pt``; before any head exists, the task answers 409 instead of leaving the model out;
- every input is checked with the package's readers first: 404 for an unknown image, 415/422 naming the problem
  for a file the model cannot use (:mod:`.uploads`), instead of a 500 from deep inside a transform;
- a head trained with another ``image_normalization`` than the configuration's (``model.pt`` records it) is
  refused with 409 and a message naming both (the check itself is
  :class:`~scsam_monai.data.preprocessing.ImagePreprocessing`'s);
- 2D images and 3D stacks are segmented slice by slice in batches, streamed from the file by
  :func:`~scsam_monai.engines.volume_inference.segment_slices` (the bundle's own inference code): the bundle's
  transform chain would load a whole stack as float32 and keep the logits of every slice (a 350-slice
  1024 x 1024 stack: 1.5 GB of image and 4.4 GB of logits);
- the label map comes back in the geometry (spacing, origin, direction) that ITK, 3D Slicer's reader, gives the
  input, so that it lies on the image in Slicer; NIfTI (``.nii.gz``) by default;
- the network is warmed up when the server starts (:meth:`ScSAMInferTask.start_warmup`: one canvas-sized batch in
  the background, which compiles the SAM encoder on a CPU), ``/info`` says how far the warm-up is, and a request
  that had to wait for it says so in its answer (``warmup``);
- a new head (training replaced the file) is loaded into a copy of the served network that shares its frozen
  encoders (:func:`copy_for_device`): the compiled SAM encoder is kept, not compiled again, and the encoders'
  weights are held once.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.utils.others.generic import name_to_device, strtobool

from scsam_monai.engines.volume_inference import segment_slices
from scsam_monai.io.readers import open_volume
from scsam_monai.label.bundle import BundleSettings
from scsam_monai.label.uploads import UploadRejected, check_image
from scsam_monai.label.warmup import Warmup
from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder

__all__ = ["ScSAMInferTask", "ServedHeadConstants", "VolumeInfod", "copy_for_device", "http_error", "write_label"]

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


def _resolved(device: str | torch.device) -> torch.device:
    """``device`` with its index (``cuda`` is the current CUDA device)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def copy_for_device(network: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """A deep copy of ``network`` that shares its frozen encoders when they are on ``device`` already.

    MONAI Label copies the template network for every device and again whenever the head file changes. The frozen
    encoders never change (a head holds no encoder weights), and the SAM encoder keeps its compiled graph outside
    the module tree, where a plain deep copy drops it: the copy calls ``torch.compile`` again at its first call
    (Dynamo then finds the graph it compiled before, if nothing else changed) and holds a second set of encoder
    weights. A copy that shares the encoders keeps the compiled graph itself and one set of weights. Encoders on
    another device are copied, as they must be moved.

    Args:
        network: the network to copy (the template, or the network served on ``device`` so far).
        device: where the copy will run.
    """
    target = _resolved(device)
    memo: dict[int, Any] = {}
    for module in network.modules():
        if isinstance(module, (FrozenSamEncoder, FrozenMaeEncoder)):
            tensors = [*module.parameters(), *module.buffers()]
            if all(_resolved(t.device) == target for t in tensors[:1]):
                memo[id(module)] = module  # deepcopy takes what the memo holds as already copied: shared
    return copy.deepcopy(network, memo)


class ServedHeadConstants(BundleConstants):
    """``BundleInferTask``'s names in the bundle, with the app's served head as the model file.

    Args:
        model_path: the served head (``<model_dir>/model.pt``).
    """

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path).resolve()

    def model_pytorch(self) -> str:
        # BundleInferTask looks for os.path.join(<bundle>, "models", <this>); os.path.join drops the parts before
        # an absolute path, so this points it at the served head without copying anything into the bundle
        return str(self.model_path)

    def model_torchscript(self) -> str:
        # ScSAM has no TorchScript model to fall back on: without the served head, there is no model
        return str(self.model_path)


class VolumeInfod:
    """Pre-transform: the input's shape and voxel size, read with the package's readers.

    Adds ``image_shape`` ``(Z, H, W)`` and ``image_spacing`` (z, y, x, entries may be None) of the file named by
    ``data["image_path"]``. (The intensity window, where the model's preprocessing needs one, is measured while
    inferring: it is the served model's to decide.)
    """

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        with open_volume(d["image_path"]) as volume:
            d["image_shape"] = tuple(int(s) for s in volume.shape)
            d["image_spacing"] = volume.spacing
        return d


class ScSAMInferTask(BundleInferTask):
    """Segment an image or a stack with the bundle's ScSAM and the app's served head (see the module docstring).

    Args:
        settings: the bundle, its overlays and overrides.
        model_path: the served head's weights (``model.pt``, written by the train task); may not exist yet.
        conf: the app's ``--conf`` settings (``preload``: ``true`` to load the network at start-up; ``warmup``:
            ``false`` for no warm-up when the server starts, :meth:`start_warmup`).
        description: shown by MONAI Label clients.
        batch_size: slices per model call (None: 8 on a GPU, 1 on a CPU).
    """

    def __init__(
        self,
        settings: BundleSettings,
        model_path: str | Path,
        conf: Mapping[str, str] | None = None,
        *,
        description: str = "ScSAM: nucleus, mitochondria and granules in EM slices",
        batch_size: int | None = None,
    ) -> None:
        # BundleInferTask's __init__ calls _load_bundle_config (below), which needs the settings
        self.settings = settings
        self.model_path = Path(model_path).resolve()
        self.batch_size = batch_size
        self.class_names = settings.class_names()
        self._lock = threading.Lock()
        self.warmup = Warmup(strtobool(str(dict(conf or {}).get("warmup", "true"))), name="the ScSAM network")
        labels = {name: value for value, name in enumerate(self.class_names) if value > 0}
        config = {"result_extension": RESULT_EXTENSIONS[0]}
        super().__init__(
            str(settings.bundle_dir),
            dict(conf or {}),
            const=ServedHeadConstants(self.model_path),
            type=InferType.SEGMENTATION,
            add_post_restore=False,
            load_strict=True,
            config=config,
        )
        if not self.valid:
            # BundleInferTask leaves a bundle without weights out: it returns before BasicInferTask's __init__. The
            # app's head comes later, from training (another process), so finish that __init__ here, without a
            # network: _get_network builds it from the bundle config when a head exists.
            BasicInferTask.__init__(
                self,
                path=str(self.model_path),
                network=None,
                type=InferType.SEGMENTATION,
                labels=labels,
                dimension=2,
                description=description,
                load_strict=True,
                config=config,
            )
            self.valid = True
            self.version = settings.metadata().get("version")
            logger.info(f"No ScSAM head at {self.model_path} yet: /infer answers 409 until training writes one.")
        # the label values of the label map (1..C) from the app's class names: a head trained on other classes than
        # metadata.json's channel_def (which BundleInferTask reads) is served with its own names
        self.labels = labels
        self.description = description
        # one served head: BundleInferTask offers every *.pt of the bundle's models/ folder (encoders, training
        # states) as a model_filename choice, and BasicInferTask would load the one a client names
        self._config.pop("model_filename", None)

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """``train.yaml`` + ``inference.yaml`` + the app's overlays and overrides, ``bundle_root`` set.

        (``BundleInferTask`` reads ``inference.yaml`` alone; the app's ``configs`` and ``overrides`` settings,
        e.g. ``demo.yaml`` or checkpoint paths, apply to inference too.)
        """
        return self.settings.parser("train.yaml", "inference.yaml")

    def _require_head(self) -> None:
        if not self.model_path.is_file():
            raise HTTPException(
                status_code=409,
                detail=f"No trained ScSAM head at {self.model_path}: train one first (POST /train/<model>) or start "
                "the server with --conf head_checkpoint PATH.",
            )

    def _template(self) -> torch.nn.Module:
        """The network copied for each device (built here when the server started without a head)."""
        if self.network is None:
            # the server started without a head, so BundleInferTask built no network: build it now
            self.network = self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True)
        return self.network

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        """The network for ``device`` with the served head, reloaded when its file changed; 409 when unusable.

        ``BasicInferTask``'s caching (one network per device, reloaded when the head file's modification time
        changes) with two differences: the copy shares the frozen encoders of the network it replaces
        (:func:`copy_for_device`: no second compilation of the SAM encoder), and a head that does not fit the
        configured network (another ``image_normalization``, another head architecture, a corrupt file) is refused
        with 409 and the reason; the previous head stays cached, so the next request tries the file again.
        """
        self._require_head()
        stamp = self.model_path.stat().st_mtime
        cached = self._networks.get(device)
        if cached is not None and cached[1] == stamp:
            return cached[0]
        try:
            network = copy_for_device(cached[0] if cached is not None else self._template(), device)
            network.to(torch.device(device))
            checkpoint = torch.load(self.model_path, map_location=torch.device(device), weights_only=True)
            if isinstance(checkpoint, dict) and isinstance(checkpoint.get(self.model_state_dict), dict):
                checkpoint = checkpoint[self.model_state_dict]
            network.load_state_dict(checkpoint, strict=self.load_strict)
        except torch.OutOfMemoryError:
            raise
        # a head file that cannot be served (another normalisation or architecture, truncated, or holding pickled
        # objects that weights_only loading refuses: pickle.UnpicklingError) is the client's 409, not a server error
        except Exception as err:  # noqa: BLE001
            raise HTTPException(
                status_code=409, detail=f"The ScSAM head {self.model_path} cannot be served: {err}"
            ) from err
        network.train(self.train_mode)
        self._networks[device] = (network, stamp)
        logger.info(f"Loaded ScSAM head weights from {self.model_path} ({device})")
        return network

    def warmup_device(self) -> str:
        """The device requests run on unless they name one: the app's ``device``, else MONAI Label's first."""
        return name_to_device(self.settings.device or self._config.get("device"))

    def start_warmup(self) -> None:
        """Warm the network up in the background (once; a no-op with ``--conf warmup false``).

        Builds the network for :meth:`warmup_device` with the served head (or, before any head exists, the
        template whose encoders the first head's network will share) and segments canvas-sized noise the way
        requests are segmented (a full batch, and a single slice when batches hold more), so that the SAM encoder's
        compilation (``sam_compile``) and the first allocations happen now. Requests arriving meanwhile wait for it
        (:class:`~.warmup.Warmup`).
        """
        device = self.warmup_device()
        self.warmup.start(lambda: self._warm(device), self._lock)

    def _warm(self, device: str) -> dict[str, Any]:
        """The warm-up run (see :meth:`start_warmup`); what ``/info`` reports about it."""
        details: dict[str, Any] = {"device": device, "head": False}
        network = None
        if self.model_path.is_file():
            try:
                network = self._get_network(device, None)
                details["head"] = True
            except HTTPException as err:  # warm the encoders anyway: the next head's network shares them
                details["head_error"] = err.detail
        if network is None:
            network = self._template().to(torch.device(device)).eval()
        batch = self.batch_size or (8 if torch.device(device).type == "cuda" else 1)
        noise = np.random.default_rng(0).integers(0, 256, (network.canvas_size, network.canvas_size), np.uint8)
        # a full batch, then a single slice: a stack's last batch is often partial, and a compiled encoder compiles
        # once more (with a dynamic batch size) for the first batch of another size
        details["batches"] = [batch, 1] if batch > 1 else [1]
        for size in details["batches"]:
            segment_slices(network, [noise] * size, writer=lambda *_: None, batch_size=batch, progress=False)
        sam = getattr(network, "sam_encoder", None)
        details["sam_compiled"] = bool(sam is not None and sam.compiled)
        return details

    def info(self) -> dict[str, Any]:
        """``BundleInferTask``'s info with ``warmup``: the start-up warm-up's state (:meth:`~.warmup.Warmup.info`)."""
        return {**super().info(), "warmup": self.warmup.info()}

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        """:class:`VolumeInfod` only: slices are read, normalised and batched while inferring (``run_inferer``).

        (Replaces the bundle's ``preprocessing``, which loads the whole image with MONAI's readers.)
        """
        return [VolumeInfod()]

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """Segment the input slice by slice in batches into a uint8 label map ``(Z, H, W)`` at ``data["pred"]``.

        The slices stream from the file through the network and the bundle's logit merging (threshold 0.5, as
        ``postprocessing`` of ``inference.yaml``), so memory holds a few batches and the label map only. They are
        normalised as the served network's preprocessing says (for ``prepared``: the file's own window, measured
        as ``scsam-prepare`` measures a cell).
        """
        network = self._get_network(device, data)
        label = np.zeros(data["image_shape"], dtype=np.uint8)

        def write(index: int, plane: np.ndarray) -> None:
            label[index] = plane

        with open_volume(data["image_path"]) as volume:
            segment_slices(
                network,
                volume,
                writer=write,
                batch_size=self.batch_size,
                progress=False,
            )
        data[self.output_label_key] = label
        return data

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        """None: ``run_inferer`` already returns the label map (and ``Restored`` does not apply to it)."""
        return []

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        """Write the label map with the input's ITK geometry (:func:`write_label`); its shape and classes found."""
        label = data[self.output_label_key]
        suffix = extension or data.get("result_extension") or RESULT_EXTENSIONS[0]
        out = Path(tempfile.NamedTemporaryFile(suffix=suffix, delete=False).name)
        write_label(label, data["image_path"], out, data.get("image_spacing"))
        return str(out), {"shape": list(label.shape), "classes_found": [int(v) for v in np.unique(label)]}

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict[str, Any]]:
        """Check the request and its image (404, 415, 422, 409 with a message), then run ``BasicInferTask``'s."""
        start = time.time()
        image = request.get("image")
        if not isinstance(image, (str, Path)) or not str(image):
            raise HTTPException(status_code=404, detail=f"Image {request.get('image')!r} not found in the datastore.")
        path = Path(image)
        if not path.exists():
            raise HTTPException(status_code=404, detail=f"Image {path.name} not found.")
        extension = request.get("result_extension") or RESULT_EXTENSIONS[0]
        if extension not in RESULT_EXTENSIONS:
            raise HTTPException(
                status_code=422, detail=f"result_extension {extension!r}: choose one of {', '.join(RESULT_EXTENSIONS)}."
            )
        try:
            check_image(path, name=path.name)
        except UploadRejected as err:
            raise http_error(err) from err
        checked = time.time()
        self._require_head()
        request = {**request, "image": str(path), "result_extension": extension}
        if self.settings.device:
            request["device"] = self.settings.device  # the app's --conf device wins over a client's choice
        during_warmup = self.warmup.busy
        arrived = time.time()
        with self._lock:
            waited = time.time() - arrived
            result_file, params = super().__call__(request, callbacks)
        if during_warmup:
            params["warmup"] = self.warmup.report(waited)  # why this answer took longer
        # BasicInferTask reports the model's foreground labels; the answer also names the background value
        params["label_names"] = {name: value for value, name in enumerate(self.class_names)}
        params["latencies"]["check"] = round(checked - start, 3)
        logger.info(f"Segmented {path.name} {tuple(params['shape'])} in {time.time() - start:.2f} s -> {result_file}")
        return result_file, params
