"""How a model's input images are normalised: one object, saved with the weights, asked by every path.

A trained head only works on images normalised the way its training images were. :class:`ImagePreprocessing`
holds that choice (the ``image_normalization`` of the bundle's configs) and its window policy, and every path that
feeds images to the model asks it instead of passing a string along:

- training and evaluation (``train.yaml``'s ``preprocessing``) and the bundle's transform chain
  (``inference.yaml``'s ``preprocessing``, which MONAI Label's stock app runs) use
  :meth:`~ImagePreprocessing.transform`;
- volume inference and the MONAI Label app ask :meth:`~ImagePreprocessing.window` for the intensity window of an
  input and normalise its slices with :meth:`~ImagePreprocessing.normalizer`;
- the weights record it (:meth:`~ImagePreprocessing.attach` on the head): ``models/model.pt`` carries it, a head
  refuses to load under another one, and the export and the MONAI Label app read it back from the model.

The two normalisations:

- ``per_image``: every slice by its own 0.5 / 99.5 percentiles (any datalist);
- ``prepared``: the model was trained on ``scsam-prepare``'s slices, normalised once per cell. Slices that
  ``scsam-prepare`` wrote (a datalist's items) map 0..255 to 0..1 as training read them
  (:data:`~scsam_monai.data.normalize.PREPARED_SLICE_WINDOW`); a raw input (a volume, or a 2D image, given to
  inference) is normalised with its own per-volume window, measured as ``scsam-prepare`` measures a cell.

The arithmetic is :mod:`scsam_monai.data.normalize`'s in every path (numerically MONAI's
``ScaleIntensityRangePercentiles`` for ``per_image``, tested), so that training and every kind of inference agree
to the last bit; MONAI's transform cannot normalise a stack slice by slice nor apply a window measured streaming
over a volume, which volume inference needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import nn

from scsam_monai.data.normalize import (
    IMAGE_NORMALIZATIONS,
    PREPARED_SLICE_WINDOW,
    IntensityWindow,
    SliceNormalizer,
    measure_volume_window,
    normalize_slice,
    volume_window,
)
from scsam_monai.io.readers import Volume

__all__ = [
    "INPUTS",
    "PIXEL_SIZE_KEY",
    "PREPROCESSING_KEY",
    "ImagePreprocessing",
    "IntensityNormalized",
    "as_2d_slice",
]

logger = logging.getLogger(__name__)

PREPROCESSING_KEY = "image_normalization"
"""State-dict entry of ``model.pt`` recording the preprocessing (UTF-8 text in a uint8 tensor, so that the file
stays a plain tensor dict ``torch.load(weights_only=True)`` reads)."""

PIXEL_SIZE_KEY = "pixel_size_nm"
"""State-dict entry of ``model.pt`` recording the model's pixel size in nanometres (a float64 scalar tensor), when
training knew it."""

INPUTS = ("raw", "datalist")
"""What images a path feeds: ``raw`` inputs (files given to inference) or a ``datalist``'s items (for ``prepared``:
slices ``scsam-prepare`` wrote)."""


@dataclass(frozen=True)
class ImagePreprocessing:
    """How the model's input images are normalised to [0, 1] (see the module docstring).

    Args:
        normalization: ``"per_image"`` or ``"prepared"``.
        pixel_size: the model's pixel size in nanometres: the size of one canvas pixel when the model saw its
            training images (the data's pixel size times the training slices' longest side over the canvas, see
            :mod:`scsam_monai.data.pixel_size`); None when training did not know it. Inference resamples inputs
            to it and tiles what does not fit the canvas. It is a property of the weights, not a setting: loading
            weights adopts the pixel size they record, and it takes no part in comparing preprocessings.

    Raises:
        ValueError: an unknown normalisation, naming the valid ones; a pixel size that is not positive.

    Example::

        pre = ImagePreprocessing.of("prepared")
        window = pre.window(volume)                     # the volume's own window (raw input)
        slice01 = pre.normalizer(window)(volume.read_slice(0))
    """

    normalization: str = "per_image"
    pixel_size: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.normalization not in IMAGE_NORMALIZATIONS:
            raise ValueError(
                f"image_normalization must be one of {', '.join(IMAGE_NORMALIZATIONS)} (the one the model was "
                f"trained with, train.yaml's image_normalization); got {self.normalization!r}."
            )
        if self.pixel_size is not None:
            size = float(self.pixel_size)
            if not (math.isfinite(size) and size > 0):
                raise ValueError(f"pixel_size must be a positive number of nanometres, got {self.pixel_size!r}.")
            object.__setattr__(self, "pixel_size", size)

    def with_pixel_size(self, pixel_size: float | None) -> ImagePreprocessing:
        """The same normalisation with the model's pixel size ``pixel_size`` (nm; None: unknown)."""
        return replace(self, pixel_size=pixel_size)

    @classmethod
    def of(cls, value: ImagePreprocessing | str | Mapping[str, Any]) -> ImagePreprocessing:
        """The preprocessing ``value`` names: an instance, a normalisation name (configs) or its :meth:`as_dict`."""
        if isinstance(value, ImagePreprocessing):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        return cls(str(value))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``predictions.json``, the export's metadata)."""
        return asdict(self)

    def __str__(self) -> str:
        return self.normalization

    # ---- the window policy ---------------------------------------------------------------------------------
    def window(
        self,
        slices: Volume | Iterable | None = None,
        window: IntensityWindow | None = None,
        *,
        inputs: str = "raw",
        workers: int = 4,
    ) -> IntensityWindow | None:
        """The intensity window the slices of one input are normalised with; None: each slice its own percentiles.

        Args:
            slices: the input: a :class:`~scsam_monai.io.readers.Volume` (measured in one streaming pass, as
                ``scsam-prepare`` measures a cell), or slices that can be read twice (a sequence, an array).
            window: a window measured already (returned as it is for ``prepared``).
            inputs: ``"raw"`` or ``"datalist"`` (:data:`INPUTS`): for ``prepared``, a datalist's slices were
                written by ``scsam-prepare`` and map 0..255 to 0..1 without measuring anything.
            workers: reader threads of the volume measurement.

        Raises:
            ValueError: ``prepared`` for a one-shot iterator without a window (it would have to be read twice).
        """
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}.")
        if self.normalization == "per_image" or window is not None:
            return window
        if inputs == "datalist":
            return PREPARED_SLICE_WINDOW
        if isinstance(slices, Volume):
            return measure_volume_window(slices, workers=workers)
        if isinstance(slices, (Sequence, np.ndarray, torch.Tensor)):
            return volume_window((as_2d_slice(s) for s in slices), source="the slices given")
        raise ValueError(
            "image_normalization 'prepared' needs the whole volume's intensity window before the first slice: pass "
            "window= (scsam_monai.data.normalize.measure_volume_window), a Volume, or a sequence that can be read "
            "twice."
        )

    def normalizer(self, window: IntensityWindow | None) -> SliceNormalizer:
        """Normalises slices with ``window`` (from :meth:`window`) into float32 [0, 1], fast for 8/16-bit data."""
        return SliceNormalizer(window)

    def transform(self, keys: KeysCollection, *, inputs: str = "raw") -> IntensityNormalized:
        """The MONAI transform of this preprocessing, for channel-first images ``(1, H, W)`` or stacks ``(1, H, W, D)``.

        Args:
            keys: keys of the images.
            inputs: ``"datalist"`` for training and evaluation, ``"raw"`` for files given to inference.
        """
        return IntensityNormalized(keys, preprocessing=self, inputs=inputs)

    # ---- the record in the weights -------------------------------------------------------------------------
    def attach(self, module: nn.Module) -> nn.Module:
        """Make ``module`` (a head) record this preprocessing in its state dict and check it when weights load.

        The module is changed in place (two state-dict hooks; attaching again replaces the preprocessing) and
        returned. A checkpoint that records another preprocessing is refused with a message naming both; one
        that records none (written before it was recorded) loads with a warning.
        """
        if getattr(module, "image_preprocessing", None) is None:
            module.register_state_dict_post_hook(_save_preprocessing)
            module.register_load_state_dict_pre_hook(_check_preprocessing)
        module.image_preprocessing = self
        return module

    @staticmethod
    def recorded(state: Mapping[str, Any], prefix: str = "") -> ImagePreprocessing | None:
        """The preprocessing a state dict records under ``prefix`` (with its pixel size), or None when it records
        none."""
        value = state.get(prefix + PREPROCESSING_KEY)
        if value is None:
            return None
        text = value if isinstance(value, str) else bytes(torch.as_tensor(value).to(torch.uint8).tolist()).decode()
        size = state.get(prefix + PIXEL_SIZE_KEY)
        return ImagePreprocessing(text, None if size is None else float(torch.as_tensor(size)))

    @staticmethod
    def of_model(model: nn.Module) -> ImagePreprocessing:
        """The preprocessing a model (or its ``head``) was built with; ``per_image`` for a model that has none."""
        for part in (model, getattr(model, "head", None)):
            found = getattr(part, "image_preprocessing", None)
            if isinstance(found, ImagePreprocessing):
                return found
        return ImagePreprocessing()

    def _encoded(self) -> torch.Tensor:
        return torch.tensor(list(self.normalization.encode("utf-8")), dtype=torch.uint8)


def _save_preprocessing(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    preprocessing = module.image_preprocessing
    state_dict[prefix + PREPROCESSING_KEY] = preprocessing._encoded()
    if preprocessing.pixel_size is not None:
        state_dict[prefix + PIXEL_SIZE_KEY] = torch.tensor(preprocessing.pixel_size, dtype=torch.float64)


def _check_preprocessing(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata, strict, missing, unexpected, errors
) -> None:
    expected = module.image_preprocessing
    recorded = ImagePreprocessing.recorded(state_dict, prefix)
    state_dict.pop(prefix + PREPROCESSING_KEY, None)  # not parameters: never "unexpected"
    state_dict.pop(prefix + PIXEL_SIZE_KEY, None)
    if recorded is not None and recorded == expected and recorded.pixel_size is not None:
        # the pixel size belongs to the weights: a head that loads them segments at their pixel size
        module.image_preprocessing = expected.with_pixel_size(recorded.pixel_size)
    if recorded is None:
        logger.warning(
            "The head's weights record no image_normalization (saved before it was recorded); assuming the "
            "configured %r. Re-train, or save them again from a head built by this version, to record it.",
            str(expected),
        )
    elif recorded != expected:
        raise ValueError(
            f"The head was trained with image_normalization {str(recorded)!r} but this configuration normalises "
            f"images with {str(expected)!r}: set image_normalization: {recorded} (config or --image_normalization "
            f"{recorded}) so that images are normalised as in training."
        )


def as_2d_slice(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A slice ``(H, W)`` or ``(1, H, W)`` (array or tensor) as an ``(H, W)`` array.

    Raises:
        ValueError: any other shape.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"Expected a 2D slice (H, W) or (1, H, W), got shape {tuple(array.shape)}.")
    return array


class IntensityNormalized(MapTransform):
    """Normalise channel-first images ``(1, H, W)`` or stacks ``(1, H, W, D)`` to [0, 1] as the model expects.

    Slices of a stack run along the last axis; a stack's window (``prepared``, raw inputs) is measured over all
    its slices. A MetaTensor keeps its metadata.

    Args:
        keys: keys of the images.
        preprocessing: the model's :class:`ImagePreprocessing` (or its normalisation name).
        inputs: ``"raw"`` or ``"datalist"`` (see :meth:`ImagePreprocessing.window`).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        preprocessing: ImagePreprocessing | str,
        inputs: str = "raw",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}.")
        self.preprocessing = ImagePreprocessing.of(preprocessing)
        self.inputs = inputs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
            if array.ndim not in (3, 4) or array.shape[0] != 1:
                raise ValueError(f"{key}: expected a channel-first (1, H, W[, D]) image, got {array.shape}.")
            planes = array[0][None] if array.ndim == 3 else np.moveaxis(array[0], -1, 0)
            window = self.preprocessing.window(planes, inputs=self.inputs)
            out = np.stack([normalize_slice(p, window) for p in planes])
            out = out[0] if array.ndim == 3 else np.moveaxis(out, 0, -1)
            values = torch.from_numpy(np.ascontiguousarray(out[None]))
            if isinstance(image, torch.Tensor):
                result = image.to(torch.float32).clone()  # keeps a MetaTensor's metadata
                result.copy_(values.to(result.device))
                d[key] = result
            else:
                d[key] = values.numpy()
        return d
