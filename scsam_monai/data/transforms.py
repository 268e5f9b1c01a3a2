"""MONAI transforms for the cached-embedding pipeline."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scsam_monai.io.readers import DataPreparationError, read_image_2d
from scsam_monai.networks.geometry import resize_longest_and_pad

__all__ = [
    "LoadImage2Dd",
    "LoadCachedArrayd",
    "LabelToMaskGridd",
    "MergeClassLogitsd",
    "merge_class_logits",
    "as_size_tensor",
]


class LoadImage2Dd(MapTransform):
    """Read 2D images named under ``keys`` as ``(H, W)`` arrays (row-major, as the file stores them).

    MONAI's ``LoadImage`` returns 2D images transposed (W, H) by its ITK/PIL convention; reading through the
    package's readers (:func:`~scsam_monai.io.readers.read_image_2d`: TIFF with tifffile, PNG/JPEG/BMP with
    Pillow, ...) keeps images, labels and written predictions in the same (H, W) orientation.
    The path is kept under ``<key>_path``.

    Args:
        keys: keys holding file paths.
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_path"] = str(d[key])
            d[key] = read_image_2d(d[key])
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


def merge_class_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Merge per-class mask logits ``(C, H, W)`` (or ``(B, C, H, W)``) into an integer label map.

    Rule: at each pixel the class with the highest logit wins if its sigmoid probability exceeds
    ``threshold``; otherwise the pixel is background (0). Classes are numbered 1..C. Every class is always
    prompted, so no ground truth is needed (or used) to decide which classes to predict.

    Returns:
        ``(1, H, W)`` (or ``(B, 1, H, W)``) int64 label map.
    """
    best, index = logits.max(dim=-3, keepdim=True)
    return torch.where(torch.sigmoid(best.float()) > threshold, index + 1, torch.zeros_like(index))


class MergeClassLogitsd(MapTransform):
    """Dictionary transform applying :func:`merge_class_logits` to ``keys``.

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
            d[key] = merge_class_logits(torch.as_tensor(d[key]), self.threshold)
        return d
