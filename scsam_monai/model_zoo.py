"""What the stand-alone ``inference.yaml`` and the Model Zoo / MONAI Label stock loaders need from the package.

The bundle's weights file ``models/model.pt`` has ONE layout, written by training and read by every consumer:
the trained head's state dict (``fusion.*``, ``prompt_encoder.*``, ``mask_decoder.*``, ``sam_prompt_encoder.*``)
plus the entry :data:`NORMALIZATION_KEY`, the ``image_normalization`` the head was trained with (UTF-8 bytes in
a uint8 tensor, so the file stays a plain tensor dict that ``torch.load(weights_only=True)`` reads). The frozen
SAM and MAE encoders are never in it: they come from their own checkpoints (``large_files.yml``, the MAE
pre-training).

- :func:`record_normalization` makes a head write that entry with its state dict and check it when weights are
  loaded: a checkpoint trained with another normalisation is refused with a message naming both; one without
  the entry (written before it existed) loads with a warning.
- :class:`ScSAMBundleNetwork` is the image-in network (``network_def`` of ``inference.yaml``): its state dict IS
  the head's, so ``model.pt`` loads into it strictly, as the Model Zoo's ``ckpt_export`` and MONAI Label's
  ``BundleInferTask`` load ``network_def`` (the latter asks for ``strict=False``; the head is loaded strictly
  anyway, so weights that do not fit are never skipped in silence).
- :class:`ScSAMIntensityd` is the intensity normalisation of images that reach the network as files (MONAI
  Label uploads, ``preprocessing`` of ``inference.yaml``), computed by :mod:`scsam_monai.data.normalize` as the
  bundle's own inference does; :class:`SliceWiseInferer` runs the 2D network on a 2D image or slice by slice on
  a 3D one.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform
from torch import nn

from scsam_monai.data import embedding_dataset
from scsam_monai.data.normalize import check_image_normalization, normalize_slice, volume_window
from scsam_monai.networks.scsam import ScSAM, ScSAMHead

__all__ = [
    "NORMALIZATION_KEY",
    "record_normalization",
    "recorded_normalization",
    "ScSAMBundleNetwork",
    "ScSAMIntensityd",
    "SliceWiseInferer",
    "datalist_embedding_dataset",
]

logger = logging.getLogger(__name__)

NORMALIZATION_KEY = "image_normalization"
"""State-dict entry of ``model.pt`` holding the ``image_normalization`` the head was trained with."""


def _encode(value: str) -> torch.Tensor:
    return torch.tensor(list(value.encode("utf-8")), dtype=torch.uint8)


def recorded_normalization(state: Mapping[str, Any], prefix: str = "") -> str | None:
    """The ``image_normalization`` a state dict records under ``prefix``, or None when it records none."""
    value = state.get(prefix + NORMALIZATION_KEY)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return bytes(torch.as_tensor(value).to(torch.uint8).tolist()).decode("utf-8")


def record_normalization(module: nn.Module, image_normalization: str) -> nn.Module:
    """Make ``module`` (a head) save ``image_normalization`` in its state dict and check it when loading weights.

    The module is changed in place (two state-dict hooks; calling again replaces the value) and returned, so a
    config can wrap a built head: ``network_def: "$scsam_monai.model_zoo.record_normalization(@head_def, ...)"``.

    Args:
        module: the head (or any network whose weights travel as ``model.pt``).
        image_normalization: ``"per_image"`` or ``"prepared"``, what the configuration normalises images with.

    Raises:
        ValueError: an unknown ``image_normalization``; and, when weights are loaded later, a checkpoint that
            records another one.
    """
    check_image_normalization(image_normalization)
    if getattr(module, "_scsam_image_normalization", None) is None:
        module.register_state_dict_post_hook(_save_normalization)
        module.register_load_state_dict_pre_hook(_check_normalization)
    module._scsam_image_normalization = image_normalization
    return module


def _save_normalization(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict[prefix + NORMALIZATION_KEY] = _encode(module._scsam_image_normalization)


def _check_normalization(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata, strict, missing, unexpected, errors
) -> None:
    expected = module._scsam_image_normalization
    recorded = recorded_normalization(state_dict, prefix)
    state_dict.pop(prefix + NORMALIZATION_KEY, None)  # not a parameter: never "unexpected"
    if recorded is None:
        logger.warning(
            "The head's weights record no image_normalization (saved before it was recorded); assuming the "
            "configured %r. Re-train, or save them again from a head built by this version, to record it.",
            expected,
        )
    elif recorded != expected:
        raise ValueError(
            f"The head was trained with image_normalization {recorded!r} but this configuration normalises images "
            f"with {expected!r}: set image_normalization: {recorded} (config or --image_normalization {recorded}) "
            "so that images are normalised as in training."
        )


class ScSAMBundleNetwork(ScSAM):
    """The image-in ScSAM whose weights are only the trained head's: ``network_def`` of ``inference.yaml``.

    ``state_dict()`` is the head's (plus :data:`NORMALIZATION_KEY`) and ``load_state_dict`` loads the head,
    always strictly: ``models/model.pt`` as training writes it is exactly this network's state dict, and the
    frozen encoders keep the weights their own checkpoints gave them. Tracing (``ckpt_export --use_trace``)
    works for any image size; scripting does not (segment-anything's encoder is not scriptable).

    Args:
        sam_encoder: a ``FrozenSamEncoder`` (None for the MAE* variant).
        mae_encoder: a ``FrozenMaeEncoder`` (None for the SAM* variant).
        head: the head (``build_scsam_head``).
        image_normalization: what images are normalised with before the network (recorded in the weights).
    """

    def __init__(
        self,
        *,
        sam_encoder: nn.Module | None,
        mae_encoder: nn.Module | None,
        head: ScSAMHead,
        image_normalization: str = "per_image",
    ) -> None:
        super().__init__(
            sam_encoder=sam_encoder, mae_encoder=mae_encoder, head=record_normalization(head, image_normalization)
        )
        self.image_normalization = image_normalization

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):  # type: ignore[override]
        """The head's state dict (the weights ``model.pt`` holds)."""
        return self.head.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load the head's weights strictly (``strict`` is ignored: a head that does not fit is an error)."""
        return self.head.load_state_dict(state_dict, strict=True, assign=assign)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` for images ``(B, 1, H, W)`` normalised to [0, 1]."""
        if torch.jit.is_tracing():
            # a cached positional encoding would enter the trace as a constant in one pass and not in another
            self.head._dense_pe_cache = None
        return super().forward(images)


class ScSAMIntensityd(MapTransform):
    """Normalise channel-first images ``(1, H, W)`` or ``(1, H, W, D)`` to [0, 1] as the trained model expects.

    ``per_image``: every 2D slice by its own 0.5 / 99.5 percentiles (MONAI's ``ScaleIntensityRangePercentiles``
    values, what training applies). ``prepared``: the whole image's window, measured as ``scsam-prepare``
    measures a volume's, applied to every slice (for a 2D image: the image's own window). Both are
    :func:`scsam_monai.data.normalize.normalize_slice`; slices of a 3D image run along the last axis.

    Args:
        keys: keys of the images.
        image_normalization: ``"per_image"`` or ``"prepared"``, the one the model was trained with.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, image_normalization: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_normalization = check_image_normalization(image_normalization)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
            if array.ndim not in (3, 4) or array.shape[0] != 1:
                raise ValueError(f"{key}: expected a channel-first (1, H, W[, D]) image, got {array.shape}.")
            planes = array[0] if array.ndim == 3 else np.moveaxis(array[0], -1, 0)
            planes = planes[None] if planes.ndim == 2 else planes
            window = None
            if self.image_normalization == "prepared":
                window = volume_window(iter(planes), source=str(key))
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


class SliceWiseInferer(Inferer):
    """Run a 2D network on ``(B, C, H, W)`` inputs, or slice by slice (along the last axis) on ``(B, C, H, W, D)``.

    Args:
        batch_size: slices per network call for 3D inputs.
    """

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.batch_size = batch_size

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits of the same spatial shape as ``inputs``."""
        if inputs.ndim == 4:
            return network(inputs, *args, **kwargs)
        if inputs.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, D) inputs, got {tuple(inputs.shape)}.")
        b, c, h, w, depth = inputs.shape
        slices = inputs.permute(0, 4, 1, 2, 3).reshape(b * depth, c, h, w)
        outputs = [
            network(slices[i : i + self.batch_size], *args, **kwargs) for i in range(0, len(slices), self.batch_size)
        ]
        logits = torch.cat(outputs)
        return logits.reshape(b, depth, -1, h, w).permute(0, 2, 3, 4, 1)


def datalist_embedding_dataset(
    data: Sequence[Mapping[str, Any]], *, records: Sequence[dict], **kwargs: Any
) -> torch.utils.data.Dataset:
    """``train#dataset`` / ``validate#dataset`` of ``train.yaml``: the cached embeddings of the datalist ``data``.

    The Model Zoo's train-config convention and MONAI Label's ``BundleTrainTask`` set the datalist items as
    ``train#dataset#data`` (``validate#dataset#data``); ``train.yaml``'s ``records`` (the embedding precompute)
    read them from there, and this dataset serves those records.

    Args:
        data: the datalist items the records were computed from.
        records: their cached embeddings (``precompute_embeddings``).
        kwargs: ``mask_grid`` and ``embedding_dtype`` of the package's ``cached_embedding_dataset``.

    Raises:
        ValueError: records of no image while ``data`` names some (a precompute that read another list).
    """
    if data and not records:
        raise ValueError(f"train.yaml: {len(data)} datalist items but no cached embeddings (records) for them.")
    return embedding_dataset.cached_embedding_dataset(records, **kwargs)
