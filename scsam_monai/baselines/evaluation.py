"""Score any method the same way: full-resolution predictions of the test images, the paper's metrics, timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scsam_monai.data.transforms import merge_class_logits
from scsam_monai.metrics import segmentation_scores
from scsam_monai.networks.scsam import ScSAM

__all__ = ["TestItem", "Evaluation", "load_test_items", "evaluate_predictor", "ScSAMPredictor"]


@dataclass
class TestItem:
    """One preprocessed test image: ``image`` ``(1, H, W)`` in [0, 1] and ``label`` ``(H, W)``."""

    name: str
    image: torch.Tensor
    label: np.ndarray


@dataclass
class Evaluation:
    """Scores (``segmentation_scores``), mean seconds per image, and the first predictions for the figure."""

    scores: dict
    seconds_per_image: float
    examples: list[np.ndarray] = field(default_factory=list)


def load_test_items(datalist: Sequence[Mapping[str, str]], preprocessing: Callable) -> list[TestItem]:
    """Run the bundle's preprocessing (load, channel first, intensity normalisation) on every test item."""
    items = []
    for entry in datalist:
        data = preprocessing(dict(entry))
        image = torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)
        label = np.asarray(data["label"]).reshape(image.shape[-2:]).astype(np.int64)
        items.append(TestItem(Path(str(entry["image"])).name, image.reshape(1, *image.shape[-2:]), label))
    return items


def evaluate_predictor(
    predictor: Callable[[torch.Tensor, np.ndarray | None], np.ndarray],
    items: Sequence[TestItem],
    num_classes: int,
    *,
    keep: int = 2,
    warmup: bool = True,
) -> Evaluation:
    """Predict every test item, time each prediction and score them all.

    Args:
        predictor: ``(image (1, H, W), label (H, W) or None) -> label map (H, W)``; it receives the label only if
            its ``needs_label`` attribute is true (zero-shot SAM's class rule).
        items: the test items.
        num_classes: C.
        keep: predictions kept for the qualitative figure (the first items).
        warmup: run the first item once untimed (lazy initialisation, allocator warm-up).
    """
    needs_label = bool(getattr(predictor, "needs_label", False))
    if warmup and items:
        predictor(items[0].image, items[0].label if needs_label else None)
    predictions, seconds = [], []
    for item in items:
        start = time.perf_counter()
        pred = np.asarray(predictor(item.image, item.label if needs_label else None)).astype(np.int64)
        seconds.append(time.perf_counter() - start)
        predictions.append(pred.reshape(item.label.shape))
    scores = segmentation_scores(predictions, [i.label for i in items], num_classes)
    return Evaluation(scores, float(np.mean(seconds)) if seconds else float("nan"), predictions[:keep])


class ScSAMPredictor:
    """Image ``(1, H, W)`` -> label map ``(H, W)`` with the full ScSAM (frozen encoders + trained head).

    Args:
        model: the image-in ``ScSAM``.
        threshold: sigmoid probability a class needs to win a pixel (the bundle's post-processing).
        device: where it runs.
    """

    needs_label = False

    def __init__(self, model: ScSAM, threshold: float = 0.5, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.threshold = threshold
        self.device = torch.device(device)

    def __call__(self, image: torch.Tensor, label: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(torch.as_tensor(image)[None].to(self.device))
        return merge_class_logits(logits[0, 1:], self.threshold)[0].cpu().numpy()  # channel 0: background
