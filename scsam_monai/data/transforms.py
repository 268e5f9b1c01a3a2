"""MONAI transforms for the cached-embedding pipeline."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scsam_monai.io.readers import DataPreparationError, read_image
from scsam_monai.networks.geometry import resize_longest_and_pad

__all__ = [
    "LoadEMImaged",
    "ToMonaiAxesd",
    "LoadCachedArrayd",
    "LabelToMaskGridd",
    "MergeClassLogitsd",
    "merge_class_logits",
    "as_size_tensor",
]


class LoadEMImaged(MapTransform):
    """Read the images an item names with the package's readers, row-major as the file stores them.

    The one loader of every path that reads image files: training and evaluation (images and label maps,
    ``train.yaml``), MAE pre-training (one slice of a volume, ``pretrain_mae.yaml``) and the bundle's own transform
    chain (``preprocessing`` of ``inference.yaml``, which MONAI Label's stock app and the Model Zoo tools run).
    A 2D image, or the slice an item names, comes back as ``(H, W)``; with ``stacks=True`` a 3D stack comes back
    whole as ``(H, W, D)`` (depth last, as MONAI's channel-first ``(C, H, W, D)`` and
    :class:`~scsam_monai.engines.volume_inference.SliceWiseInferer` take it). MONAI's ``LoadImage`` returns 2D images
    transposed (W, H) by its ITK/PIL convention: a model trained on one and served through the other would see
    every slice transposed, so no path uses it. The readers (:func:`~scsam_monai.io.readers.open_volume`: TIFF,
    PNG/JPEG/BMP, NIfTI/MHA/NRRD, HDF5, N5/Zarr) name the file in every error. The source is kept under
    ``<key>_path``.

    Args:
        keys: keys holding file paths (or any source ``open_volume`` opens).
        slice_key: item key of a z index: an item that has it reads that slice of its source (None: every item
            names a whole image; ``scsam-prepare``'s datalist items record their source slice as ``slice``, which
            is not an index into their file).
        container_key: item key of the dataset inside an HDF5 file or N5/Zarr container (None: none).
        stacks: read a 3D stack whole as ``(H, W, D)``; False: a stack without a slice index is an error.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_key: str | None = None,
        container_key: str | None = None,
        stacks: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.container_key = container_key
        self.stacks = stacks

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        index = d.get(self.slice_key) if self.slice_key else None
        container = d.get(self.container_key) if self.container_key else None
        for key in self.key_iterator(d):
            source = d[key]
            d[f"{key}_path"] = str(source)
            index = None if index is None else int(index)
            array = read_image(source, index=index, key=str(container) if container else None, stacks=self.stacks)
            d[key] = np.moveaxis(array, 0, -1) if array.ndim == 3 else array
        return d


class ToMonaiAxesd(MapTransform):
    """Hand row-major maps ``(H, W[, D])`` to MONAI's writers: ``(W, H[, D])``, MONAI's ``(x, y[, z])`` order.

    :class:`LoadEMImaged` keeps images as the file stores them, rows first, so that the model sees every slice as
    training did. MONAI's writers (``NibabelWriter``, ``ITKWriter``, MONAI Label's ``Writer``) take arrays in the
    (x, y) order of MONAI's ``LoadImage`` instead; the last step of ``inference.yaml``'s ``postprocessing`` swaps
    the two in-plane axes so that a label map written by them lies on its image.

    Args:
        keys: keys of channel-less maps ``(H, W)`` or ``(H, W, D)``.
        allow_missing_keys: skip absent keys.
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if value.ndim not in (2, 3):
                raise ValueError(f"{key}: expected a map (H, W) or (H, W, D), got shape {tuple(value.shape)}.")
            d[key] = value.transpose(0, 1) if isinstance(value, torch.Tensor) else np.swapaxes(value, 0, 1)
        return d


class LoadCachedArrayd(MapTransform):
    """Replace ``.npy`` paths under ``keys`` by tensors read memory-mapped (fp16 embeddings become float32).

    Args:
        keys: keys holding ``.npy`` paths.
        dtype: dtype of the returned tensors for floating-point arrays; integer arrays keep theirs.
        allow_missing_keys: skip keys absent from the item (e.g. the MAE path of a SAM* run).
    """

    def __init__(self, keys: KeysCollection, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:  # missing, truncated, not .npy, or a pickled array
                raise DataPreparationError(
                    f"{path}: cannot read cached array ({type(err).__name__}: {err}); delete the embedding cache "
                    "folder to rebuild it."
                ) from err
            if array.dtype.kind not in "biuf":
                raise DataPreparationError(f"{path}: cached array of dtype {array.dtype} is not an embedding or label.")
            if np.issubdtype(array.dtype, np.floating):
                d[key] = torch.from_numpy(np.array(array, dtype=np.float32)).to(self.dtype)
            else:
                d[key] = torch.from_numpy(np.array(array, dtype=np.int64))
        return d


class LabelToMaskGridd(MapTransform):
    """Map a label ``(1, H, W)`` onto the decoder's mask grid: longest side to ``grid``, nearest, zero-padded.

    The mask decoder's logits cover the padded square encoder canvas at ``grid x grid`` (256 for a 64 token
    grid); this puts the label on the same grid with the same resize-and-pad geometry as the encoders.

    Args:
        keys: label keys.
        grid: side of the mask grid (4 x the token grid).
    """

    def __init__(self, keys: KeysCollection, grid: int = 256, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.grid = grid

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if label.ndim == 2:
                label = label[None]
            d[key] = resize_longest_and_pad(label[None].long(), self.grid, mode="nearest")[0]
        return d


def as_size_tensor(size: Sequence[int]) -> torch.Tensor:
    """(h, w) as an int64 tensor so that it collates into ``(B, 2)``."""
    return torch.as_tensor([int(v) for v in size], dtype=torch.long)


def merge_class_logits(logits: torch.Tensor, threshold: float = 0.5, dim: int = -3) -> torch.Tensor:
    """Merge per-class mask logits ``(C, H, W)`` (or ``(B, C, H, W)``) into an integer label map.

    Rule: at each pixel the class with the highest logit wins if its sigmoid probability exceeds
    ``threshold``; otherwise the pixel is background (0). Classes are numbered 1..C. Every class is always
    prompted, so no ground truth is needed (or used) to decide which classes to predict.

    Args:
        logits: per-class logits.
        threshold: sigmoid probability a class needs to win a pixel.
        dim: the class axis (-3 for 2D maps; 0 for a channel-first map of any dimension, e.g. ``(C, H, W, D)``).

    Returns:
        ``(1, H, W)`` (or ``(B, 1, H, W)``) int64 label map: the class axis kept with size 1.
    """
    best, index = logits.max(dim=dim, keepdim=True)
    return torch.where(torch.sigmoid(best.float()) > threshold, index + 1, torch.zeros_like(index))


class MergeClassLogitsd(MapTransform):
    """Dictionary transform applying :func:`merge_class_logits` to channel-first ``keys``: ``(C, H, W[, D])``.

    Args:
        keys: keys of per-class logits.
        threshold: sigmoid probability a class needs to win a pixel.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = merge_class_logits(torch.as_tensor(d[key]), self.threshold, dim=0)
        return d
