"""Segmentation scores of ScSAM: the ISINet IoUs that SurgicalSAM reports, pooled Dice, and AJI.

Every score is computed from five numbers per image and class (see ``STATISTICS``), so the MONAI metric
buffers those fixed-size rows instead of whole label maps: images of any size mix freely, memory stays
small, and buffers gather across distributed ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from scipy import ndimage

__all__ = [
    "SCALAR_KEYS",
    "STATISTICS",
    "segmentation_scores",
    "SegmentationScoresMetric",
    "SegmentationScoresHandler",
]

SCALAR_KEYS = ("challenge_iou", "iou", "mc_iou", "miou", "aji", "dice_mean")
STATISTICS = ("intersection", "pred_area", "gt_area", "aji_intersection", "aji_union")
MAX_NUM_CLASSES = 4096
"""Largest ``num_classes`` accepted (semantic classes of EM, not instance ids; bounds the memory per image)."""
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def segmentation_scores(
    pred: Sequence[np.ndarray | torch.Tensor], label: Sequence[np.ndarray | torch.Tensor], num_classes: int
) -> dict[str, Any]:
    """Score predicted label maps against ground truth, one pair of 2D maps per image.

    Label value 0 is background and 1..``num_classes`` are the classes. A class *appears* in an image when it
    is in that image's prediction or ground truth. IoU follows ISINet's evaluation as used by SurgicalSAM
    (``eval_endovis``):

    - ``challenge_iou``: per image, the mean IoU over the classes in its ground truth; then the mean over
      images whose ground truth has a class.
    - ``iou``: the same over the classes that appear (ground truth or prediction).
    - ``mc_iou``: per class, the mean IoU over the images where it appears; then the mean over classes.
    - ``miou``: pooled, the sum of intersections over the sum of unions of all images and classes.
    - ``aji``: Aggregated Jaccard Index (Kumar et al. 2017, HoVer-Net's ``get_fast_aji``) per image and class,
      instances being 8-connected components of the class mask. Each ground-truth instance pairs with the
      predicted instance of highest IoU (a predicted instance may pair with several; ties go to the first
      in raster order); AJI = paired intersections / (paired unions + areas of ground-truth instances that
      overlap no prediction + areas of predicted instances paired with none). Averaged like ``mc_iou``:
      per class over the images where it appears, then over classes.
    - ``dice``: ``{class: 2 * sum(I) / (sum(|P|) + sum(|G|))}`` pooled over all images; ``dice_mean`` is its
      mean over classes.
    - ``class_iou``: ``{class: mean IoU over the images where it appears}``, the terms of ``mc_iou``.

    Conventions: an image whose prediction is all background while its ground truth is not scores 0 for
    each ground-truth class, and those classes' areas count in the ``miou`` union (ISINet leaves them out of
    its pooled union; everything else matches it). Images empty in both prediction and ground truth are
    skipped by every score. A class that appears in no image gets NaN in ``dice`` and ``class_iou`` and is
    left out of every mean. If no image has any foreground, every aggregate score is NaN. Values are Python
    floats.

    Args:
        pred: predicted label maps, 2D numpy arrays or tensors with integral values in 0..num_classes.
        label: ground-truth label maps, as many as ``pred``, each of the same shape as its prediction.
        num_classes: number of foreground classes.

    Returns:
        dict with ``challenge_iou``, ``iou``, ``mc_iou``, ``miou``, ``aji``, ``dice_mean`` (floats), and
        ``dice`` and ``class_iou`` (dicts from class index 1..num_classes to float).

    Raises:
        ValueError: on different numbers of predictions and labels, or an image whose maps are not 2D, differ
            in shape, or hold values that are not integers in 0..num_classes; the message names the image index.
    """
    _check_num_classes(num_classes)
    if len(pred) != len(label):
        raise ValueError(f"Got {len(pred)} predictions but {len(label)} labels.")
    stats = [_image_statistics(p, g, num_classes, index) for index, (p, g) in enumerate(zip(pred, label, strict=True))]
    return _scores_from_statistics(np.stack(stats) if stats else np.zeros((0, num_classes, len(STATISTICS))))


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if num_classes > MAX_NUM_CLASSES:
        raise ValueError(
            f"num_classes must be at most {MAX_NUM_CLASSES} (semantic classes, not instance ids), got {num_classes}."
        )


def _label_map(x: np.ndarray | torch.Tensor, num_classes: int, index: int, name: str) -> np.ndarray:
    """Check one label map and return it as an int64 array."""
    try:
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    except Exception as err:  # noqa: BLE001 - ragged lists, unsupported tensor dtypes, arbitrary objects
        raise ValueError(f"Image {index}: {name} is not an array ({type(err).__name__}: {err}).") from err
    if array.ndim != 2:
        raise ValueError(f"Image {index}: {name} must be a 2D label map, got shape {tuple(array.shape)}.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"Image {index}: {name} must hold numbers, got dtype {array.dtype}.")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ValueError(f"Image {index}: {name} holds values that are not integers.")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > num_classes):
        raise ValueError(
            f"Image {index}: {name} values must lie in 0..{num_classes}, got {array.min()}..{array.max()}."
        )
    return array


def _image_statistics(
    pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int, index: int
) -> np.ndarray:
    """Validate one image's pair of maps and return its ``(num_classes, len(STATISTICS))`` float64 rows."""
    p = _label_map(pred, num_classes, index, "prediction")
    g = _label_map(label, num_classes, index, "label")
    if p.shape != g.shape:
        raise ValueError(f"Image {index}: prediction shape {p.shape} differs from label shape {g.shape}.")
    # the confusion matrix covers the values present only: memory does not grow with num_classes squared
    k = int(max(p.max(initial=0), g.max(initial=0))) + 1
    confusion = np.bincount(g.ravel() * k + p.ravel(), minlength=k * k).reshape(k, k)
    stats = np.zeros((num_classes, len(STATISTICS)))
    stats[: k - 1, 0] = np.diag(confusion)[1:]
    stats[: k - 1, 1] = confusion.sum(axis=0)[1:]
    stats[: k - 1, 2] = confusion.sum(axis=1)[1:]
    for c in range(1, k):
        if stats[c - 1, 1] or stats[c - 1, 2]:
            stats[c - 1, 3:] = _aji_terms(p == c, g == c)
    return stats


def _aji_terms(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[float, float]:
    """AJI numerator and denominator of one class in one image, from the overlapping pairs of instances.

    Only pairs that overlap are tabulated (a sparse contingency table), so a noisy prediction with tens of
    thousands of specks costs memory in proportion to the pixels, not to instances x instances.
    """
    gt_ids, n_gt = ndimage.label(gt_mask, structure=_EIGHT_CONNECTED)
    pred_ids, n_pred = ndimage.label(pred_mask, structure=_EIGHT_CONNECTED)
    gt_area = np.bincount(gt_ids.ravel(), minlength=n_gt + 1)[1:]
    pred_area = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)[1:]
    if n_gt == 0 or n_pred == 0:
        return 0.0, float(gt_area.sum() + pred_area.sum())
    both = (gt_ids > 0) & (pred_ids > 0)
    pairs, inter = np.unique(
        (gt_ids[both].astype(np.int64) - 1) * n_pred + (pred_ids[both].astype(np.int64) - 1), return_counts=True
    )
    if pairs.size == 0:  # no instance overlaps another
        return 0.0, float(gt_area.sum() + pred_area.sum())
    g, q = pairs // n_pred, pairs % n_pred
    union = gt_area[g] + pred_area[q] - inter
    # per ground-truth instance, the overlapping prediction of highest IoU; ties go to the lowest prediction id
    # (the first in raster order); equal ratios divide to equal floats, so ties are exact
    order = np.lexsort((q, -inter / union, g))
    first = order[np.r_[True, g[order][1:] != g[order][:-1]]]
    g_best, q_best = g[first], q[first]
    paired = np.zeros(n_gt, dtype=bool)
    paired[g_best] = True
    paired_pred = np.zeros(n_pred, dtype=bool)
    paired_pred[q_best] = True
    numerator = inter[first].sum()
    denominator = union[first].sum() + gt_area[~paired].sum() + pred_area[~paired_pred].sum()
    return float(numerator), float(denominator)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator``, NaN where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """Mean of ``values`` where ``mask`` along ``axis``, NaN where the mask is empty."""
    return _ratio(np.where(mask, values, 0.0).sum(axis=axis), mask.sum(axis=axis))


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values, NaN if there are none (without numpy's empty-slice warning)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _per_image_iou(stats: np.ndarray) -> np.ndarray:
    """IoU per image and class ``(N, C)``, NaN where the class appears in neither map."""
    inter, pred_area, gt_area = stats[..., 0], stats[..., 1], stats[..., 2]
    return _ratio(inter, pred_area + gt_area - inter)


def _scores_from_statistics(stats: np.ndarray) -> dict[str, Any]:
    """All scores from the ``(N, C, len(STATISTICS))`` rows of N images; see ``segmentation_scores``."""
    inter, pred_area, gt_area, aji_inter, aji_union = np.moveaxis(np.asarray(stats, dtype=np.float64), -1, 0)
    union = pred_area + gt_area - inter
    appears, in_gt = union > 0, gt_area > 0
    iou = _per_image_iou(stats)
    class_iou = _masked_mean(iou, appears, axis=0)
    class_aji = _masked_mean(_ratio(aji_inter, aji_union), appears, axis=0)
    dice = _ratio(2 * inter.sum(axis=0), pred_area.sum(axis=0) + gt_area.sum(axis=0))
    classes = range(1, stats.shape[1] + 1)
    return {
        "challenge_iou": _nanmean(_masked_mean(iou, in_gt, axis=1)),
        "iou": _nanmean(_masked_mean(iou, appears, axis=1)),
        "mc_iou": _nanmean(class_iou),
        "miou": float(_ratio(inter.sum(), union.sum())),
        "aji": _nanmean(class_aji),
        "dice_mean": _nanmean(dice),
        "dice": {c: float(d) for c, d in zip(classes, dice, strict=True)},
        "class_iou": {c: float(v) for c, v in zip(classes, class_iou, strict=True)},
    }


def _flat_scores(scores: dict[str, Any]) -> dict[str, float]:
    """``scores`` with the per-class dicts spread out as ``dice_1``, ``class_iou_1``, ..."""
    flat = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{c}": v for c, v in value.items()})
        else:
            flat[key] = value
    return flat


def _split_batch(x: torch.Tensor, name: str) -> list[torch.Tensor]:
    """Split a batch ``(B, 1, H, W)`` or ``(B, H, W)`` of label maps into 2D maps."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name} must be label maps of shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}.")
    return list(x)


class SegmentationScoresMetric(CumulativeIterationMetric):
    """The scores of ``segmentation_scores`` as a MONAI cumulative metric.

    Each call takes a batch of integer label maps, ``(B, 1, H, W)`` or ``(B, H, W)`` tensors, or lists of
    per-image ``(1, H, W)`` or ``(H, W)`` tensors (MONAI's decollated output); images may differ in size
    within and across calls. It buffers ``(num_classes, len(STATISTICS))`` statistics per image, from which
    ``aggregate()`` returns exactly what ``segmentation_scores`` returns on all images since ``reset()``.

    Args:
        num_classes: number of foreground classes (label values 1..num_classes).

    Example::

        metric = SegmentationScoresMetric(num_classes=3)
        for batch in loader:
            metric(y_pred=predict(batch), y=batch["label"])
        scores = metric.aggregate()  # {"dice_mean": ..., "miou": ..., ...}
    """

    def __init__(self, num_classes: int) -> None:
        _check_num_classes(num_classes)
        self.num_classes = int(num_classes)
        self._num_images = 0
        super().__init__()

    def reset(self) -> None:
        """Clear the buffered images."""
        super().reset()
        self._num_images = 0

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Statistics ``(B, num_classes, len(STATISTICS))`` of a batch; image indices in errors count from reset."""
        if y is None:
            raise ValueError("SegmentationScoresMetric needs the ground truth y.")
        preds, labels = _split_batch(y_pred, "y_pred"), _split_batch(y, "y")
        if len(preds) != len(labels):
            raise ValueError(f"Got {len(preds)} predictions but {len(labels)} labels in one batch.")
        stats = []
        for p, g in zip(preds, labels, strict=True):
            stats.append(_image_statistics(p, g, self.num_classes, self._num_images))
            self._num_images += 1
        return torch.as_tensor(np.stack(stats), device=y_pred.device)

    def _statistics(self) -> np.ndarray:
        buffer = self.get_buffer()
        if buffer is None:
            return np.zeros((0, self.num_classes, len(STATISTICS)))
        return buffer.cpu().numpy()

    def aggregate(self) -> dict[str, Any]:  # type: ignore[override]
        """The scores of all images buffered since the last reset (see ``segmentation_scores``)."""
        return _scores_from_statistics(self._statistics())

    def per_image_iou(self) -> torch.Tensor:
        """IoU of each buffered image and class, ``(N, num_classes)``, NaN where a class is in neither map."""
        return torch.as_tensor(_per_image_iou(self._statistics()))


class SegmentationScoresHandler(IgniteMetricHandler):
    """Ignite handler of ``SegmentationScoresMetric`` whose value is one score, so it can be a key metric.

    On completion ``engine.state.metrics[name]`` holds ``scores[key]`` (what ``CheckpointSaver`` with
    ``save_key_metric=True`` compares) and ``self.last_scores`` the full scores dict of
    ``segmentation_scores``. Every score is also put in ``engine.state.metrics`` as a float named
    ``f"{name}_{score}"``, per class ``f"{name}_dice_{c}"`` and ``f"{name}_class_iou_{c}"``, so that
    ``StatsHandler`` and ``TensorBoardStatsHandler`` log them (both flatten nested dicts without prefixes,
    so the nested dict itself cannot go there). With ``save_details``, ``engine.state.metric_details[name]``
    holds the per-image IoU ``(N, num_classes)`` (column j is class j + 1; NaN where the class is in
    neither map), the per-image table that MONAI's ``MetricsSaver`` writes.

    Args:
        num_classes: number of foreground classes (label values 1..num_classes).
        key: the score this handler reports, one of ``SCALAR_KEYS``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g. ``from_engine(["pred", "label"])``.
        save_details: whether to store per-image IoU in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        num_classes: int,
        key: str = "dice_mean",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        if key not in SCALAR_KEYS:
            raise ValueError(f"key must be one of {SCALAR_KEYS}, got {key!r}.")
        self.key = key
        self.last_scores: dict[str, Any] | None = None
        super().__init__(
            metric_fn=SegmentationScoresMetric(num_classes),
            output_transform=output_transform,
            save_details=save_details,
        )

    def compute(self) -> float:
        """Aggregate the buffered images, record the full scores, and return ``scores[key]``."""
        scores = self.metric_fn.aggregate()
        self.last_scores = scores
        self._is_reduced = True
        if self._engine is not None and self._name is not None:
            self._engine.state.metrics.update({f"{self._name}_{k}": v for k, v in _flat_scores(scores).items()})
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("Call attach() to connect the handler to an engine first.")
            self._engine.state.metric_details[self._name] = self.metric_fn.per_image_iou()
        return float(scores[self.key])
