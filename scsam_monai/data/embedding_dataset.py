"""Precompute the frozen encoders' embeddings of a datalist into the cache and serve them as a MONAI dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, Randomizable
from torch import nn
from tqdm.auto import tqdm

from scsam_monai.data.embedding_cache import EmbeddingCache, array_sha256, transform_fingerprint
from scsam_monai.data.transforms import LabelToMaskGridd, LoadCachedArrayd, as_size_tensor
from scsam_monai.io.readers import DataPreparationError

__all__ = [
    "precompute_embeddings",
    "cached_embedding_dataset",
    "datalist_embedding_dataset",
    "check_item",
    "EMBEDDING_KEYS",
]

logger = logging.getLogger(__name__)

EMBEDDING_KEYS = {"sam": "sam_encoder", "mae": "mae_encoder"}


def _as_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _seed_transform(transform: Callable, seed: int) -> None:
    """Seed every randomizable transform of a chain (MONAI's ``set_random_state``)."""
    if isinstance(transform, Randomizable):
        transform.set_random_state(seed=seed)
    if isinstance(transform, Compose):
        for t in transform.transforms:
            _seed_transform(t, seed)


def _innermost(err: BaseException) -> BaseException:
    """The first cause in an exception chain (MONAI's ``Compose`` wraps errors in "applying transform ...")."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def _preprocess(preprocessing: Callable, item: Mapping[str, str]) -> dict:
    """Run the preprocessing of one datalist item; a failure names the item's files."""
    if not isinstance(item, Mapping) or "image" not in item:
        raise DataPreparationError(f"datalist item {item!r} has no 'image' entry.")
    try:
        return preprocessing(dict(item))
    except Exception as err:  # noqa: BLE001 - one message naming the files, the reader's error chained
        cause = _innermost(err)
        if isinstance(cause, (DataPreparationError, FileNotFoundError)):
            raise DataPreparationError(str(cause)) from err
        files = ", ".join(f"{k} {item[k]}" for k in ("image", "label") if k in item)
        raise DataPreparationError(
            f"datalist item ({files}): preprocessing failed ({type(cause).__name__}: {cause})."
        ) from err


def check_item(
    image: np.ndarray, label: np.ndarray | None, item: Mapping[str, str], num_classes: int | None = None
) -> None:
    """Check one preprocessed datalist item before it is embedded.

    Args:
        image: the preprocessed image ``(1, H, W)``.
        label: its label map ``(1, H, W)``, or None.
        item: the datalist item (for the file names in messages).
        num_classes: number of foreground classes; label values must lie in 0..num_classes (None: not checked).

    Raises:
        DataPreparationError: the image is constant (nothing to learn from, e.g. a blank slice) or not finite;
            the label's shape differs from the image's; or the label holds values that are not integers in
            0..num_classes. The message names the file(s).
    """
    image_path, label_path = item.get("image", "image"), item.get("label", "label")
    if image.size == 0:
        raise DataPreparationError(f"{image_path}: the image is empty.")
    if not np.isfinite(image).all():
        raise DataPreparationError(f"{image_path}: holds NaN or infinite values after preprocessing.")
    if float(image.min()) == float(image.max()):
        raise DataPreparationError(
            f"{image_path}: the image is constant (every pixel {float(image.min()):g} after intensity "
            "normalisation): a blank slice has nothing to segment; remove it from the datalist."
        )
    if label is None:
        return
    if tuple(label.shape[-2:]) != tuple(image.shape[-2:]):
        raise DataPreparationError(
            f"{label_path}: label shape {tuple(label.shape[-2:])} differs from the image {image_path} "
            f"{tuple(image.shape[-2:])}; a label map must have its image's height and width."
        )
    if label.dtype.kind not in "biuf":
        raise DataPreparationError(f"{label_path}: label map of dtype {label.dtype}; expected integers.")
    if label.dtype.kind == "f" and not (np.isfinite(label).all() and (label == np.round(label)).all()):
        raise DataPreparationError(
            f"{label_path}: holds label values that are not integers (a label map holds 0 for background and "
            "1..C for the classes; an interpolated or soft mask?)."
        )
    low, high = (float(label.min()), float(label.max())) if label.size else (0.0, 0.0)
    if low < 0 or (num_classes is not None and high > num_classes):
        values = np.unique(label)
        outside = values[(values < 0) | (values > (num_classes if num_classes is not None else np.inf))]
        allowed = f"0..{num_classes}" if num_classes is not None else "0 or more"
        raise DataPreparationError(
            f"{label_path}: holds label values {', '.join(f'{v:g}' for v in outside[:8])} outside {allowed} "
            f"(0 background, 1..C the classes; class_names has {num_classes} foreground classes). Pass the data "
            "set's classes with --class_names, or map the values with scsam-prepare --label-values."
        )


def _view_seed(seed: int, image_hash: str, view: int) -> int:
    return (seed * 1_000_003 + int(image_hash[:8], 16) + view * 7919) % (2**32 - 1)


def precompute_embeddings(
    datalist: Sequence[Mapping[str, str]],
    *,
    cache_dir: str | Path,
    preprocessing: Callable,
    sam_encoder: nn.Module | None = None,
    mae_encoder: nn.Module | None = None,
    augmentation: Callable | None = None,
    views_per_image: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    progress: bool = True,
    num_classes: int | None = None,
) -> list[dict]:
    """Run the frozen encoders once per image view and return records that point at the cached arrays.

    View 0 of every image is the preprocessed image itself; views 1..K-1 apply ``augmentation`` (the random
    crop-resize) seeded per image and view, so they are reproducible and cacheable: the encoders are frozen,
    so augmenting before encoding is the only way to augment. Entries already in the cache (same encoder key,
    image content and view id) are reused without running an encoder.

    Args:
        datalist: items with ``image`` and ``label`` file paths (MONAI datalist entries).
        cache_dir: the embedding cache folder.
        preprocessing: deterministic dict transform (load, channel-first, intensity normalisation to [0, 1])
            producing ``image`` and ``label`` arrays ``(1, H, W)``.
        sam_encoder: frozen SAM encoder (None for MAE*).
        mae_encoder: frozen MAE encoder (None for SAM*).
        augmentation: random dict transform applied to the preprocessed ``image``/``label`` for views >= 1.
        views_per_image: K, views per image (1 = no augmentation).
        seed: base seed of the augmented views.
        device: where the encoders run.
        batch_size: views per encoder call.
        progress: show a progress bar.
        num_classes: number of foreground classes; every label map must hold values in 0..num_classes (None:
            only integers >= 0 are required).

    Returns:
        One record per view: ``sam`` / ``mae`` (cached .npy paths), ``label`` (cached .npy path),
        ``input_size`` (resized size on the encoder canvas), ``original_size``, ``image_path``, ``view``.

    Raises:
        DataPreparationError: the datalist is empty, or an item cannot be read or fails :func:`check_item`
            (constant image, label of another shape, label values outside the classes); the message names the
            file. Nothing is cached for an item that fails.
    """
    encoders = {k: e for k, e in (("sam", sam_encoder), ("mae", mae_encoder)) if e is not None}
    if not encoders:
        raise ValueError("precompute_embeddings needs at least one encoder.")
    if views_per_image < 1:
        raise ValueError(f"views_per_image must be >= 1, got {views_per_image}.")
    if views_per_image > 1 and augmentation is None:
        raise ValueError("views_per_image > 1 needs an augmentation transform.")
    if len(datalist) == 0:
        raise DataPreparationError("The datalist is empty: no image to embed (check the datalist's splits).")
    cache = EmbeddingCache(cache_dir)
    device = torch.device(device)
    for encoder in encoders.values():
        encoder.to(device)
    # The image hash is taken after preprocessing, so it already covers the preprocessing settings.
    aug_fp = transform_fingerprint(augmentation) if augmentation is not None else "none"
    records: list[dict] = []
    computed = reused = 0
    for item in tqdm(datalist, desc="Embedding cache", disable=not progress, unit="image"):
        data = _preprocess(preprocessing, item)
        image = _as_numpy(data["image"]).astype(np.float32)
        label = _as_numpy(data["label"]) if "label" in data else None
        check_item(image, label, item, num_classes)
        image_hash = array_sha256(image)
        # labels are keyed by image and label content, so an edited label map is never served stale
        label_hash = array_sha256(label)[:16] if label is not None else "nolabel"
        views = []
        for view in range(views_per_image):
            if view == 0:
                view_id = "v0"
                view_image, view_label = image, label
            else:
                view_id = f"v{view}-s{seed}-{aug_fp}"
                _seed_transform(augmentation, _view_seed(seed, image_hash, view))
                out = augmentation({"image": torch.as_tensor(image), "label": torch.as_tensor(label)})
                view_image = _as_numpy(out["image"]).astype(np.float32)
                view_label = _as_numpy(out["label"])
            views.append((view, view_id, view_image, view_label))

        record_paths: dict[int, dict[str, str]] = {v[0]: {} for v in views}
        for key, encoder in encoders.items():
            pending = []
            for view, view_id, view_image, _ in views:
                path = cache.embedding_path(encoder.cache_key, image_hash, view_id)
                record_paths[view][key] = str(path)
                if cache.is_valid(path, tuple(encoder.embedding_shape)):
                    reused += 1
                else:
                    pending.append((path, view_image))
            # group by shape: the un-augmented view keeps the original size, augmented views the canvas size
            by_shape: dict[tuple[int, ...], list] = {}
            for path, view_image in pending:
                by_shape.setdefault(view_image.shape, []).append((path, view_image))
            for group in by_shape.values():
                for start in range(0, len(group), batch_size):
                    chunk = group[start : start + batch_size]
                    batch = torch.from_numpy(np.stack([img for _, img in chunk])).to(device)
                    with torch.no_grad():
                        embeddings = encoder(batch).float().cpu().numpy()
                    for (path, _), embedding in zip(chunk, embeddings, strict=True):
                        cache.save_embedding(path, embedding)
                        computed += 1

        for view, view_id, view_image, view_label in views:
            record = dict(record_paths[view])
            h, w = view_image.shape[-2:]
            if view_label is not None:
                label_path = cache.label_path(f"{image_hash[:16]}{label_hash}", view_id)
                view_label = view_label.reshape(1, *view_label.shape[-2:])
                if not cache.is_valid(label_path, tuple(view_label.shape)):
                    cache.save_label(label_path, view_label)
                record["label"] = str(label_path)
            any_encoder = next(iter(encoders.values()))
            record["input_size"] = as_size_tensor(any_encoder.input_size(h, w))
            record["original_size"] = as_size_tensor((h, w))
            record["image_path"] = str(item.get("image", ""))
            record["view"] = view
            records.append(record)
    logger.info(
        "Embedding cache %s: %d embeddings computed, %d reused, %d records.", cache.root, computed, reused, len(records)
    )
    return records


def cached_embedding_dataset(
    records: Sequence[dict], *, mask_grid: int | None = 256, embedding_dtype: torch.dtype = torch.float32
) -> Dataset:
    """MONAI ``Dataset`` of cached embeddings.

    Args:
        records: output of :func:`precompute_embeddings`.
        mask_grid: put the label on the decoder's ``mask_grid x mask_grid`` grid (training); None keeps the
            label at the image's size (evaluation at full resolution).
        embedding_dtype: dtype of the loaded embeddings. The cache holds float16; with ``torch.float16``
            DataLoader workers, collation and host-to-device copies move half the bytes, and
            :class:`~scsam_monai.engines.batch.EmbeddingBatch` makes float32 on the device. Worth it when
            training on a GPU (1.3x the images/s on an H200 machine); on a CPU the conversion in the main
            process costs more than it saves (0.7x), so the bundle picks float16 for CUDA only.
    """
    transforms: list = [LoadCachedArrayd(keys=["sam", "mae"], dtype=embedding_dtype, allow_missing_keys=True)]
    transforms.append(LoadCachedArrayd(keys="label", allow_missing_keys=True))
    if mask_grid is not None:
        transforms.append(LabelToMaskGridd(keys="label", grid=mask_grid))
    return Dataset(data=list(records), transform=Compose(transforms))


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
    return cached_embedding_dataset(records, **kwargs)
