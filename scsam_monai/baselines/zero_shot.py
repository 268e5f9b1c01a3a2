"""Zero-shot SAM: the automatic mask generator, with the ScSAM paper's rule for giving its masks classes.

SAM's automatic mask generator (``segment_anything.SamAutomaticMaskGenerator``) proposes class-agnostic masks.
The paper scores it by giving each mask the class of the ground truth it overlaps most; a mask that overlaps no
organelle takes the class of the nearest one. The rule reads the ground truth, so the zero-shot row is an upper
bound on what SAM's masks allow, not a method that runs without labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from scsam_monai.atomic import atomic_write_json, atomic_write_text
from scsam_monai.networks.checkpoints import load_sam_state_dict, submodule_state
from scsam_monai.networks.encoders import FrozenSamEncoder

__all__ = [
    "AMG_SETTINGS",
    "build_sam",
    "assign_mask_classes",
    "masks_to_label_map",
    "ZeroShotSamPredictor",
    "evaluate_zero_shot",
]

logger = logging.getLogger(__name__)

#: Generator settings per profile: "full" is segment-anything's default; "tiny" asks for few points and keeps
#: every mask (a random-weight SAM scores no mask as confident or stable, so SAM's filters would drop them all).
AMG_SETTINGS: dict[str, dict] = {
    "full": {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
    "tiny": {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_batch": 36},
}


def build_sam(arch: str = "vit_b", checkpoint: str | None = None, *, allow_random_weights: bool = False) -> Sam:
    """Segment-anything's full ``Sam`` (image encoder, prompt encoder, mask decoder) for an arch of ours.

    The image encoder is built like :class:`~scsam_monai.networks.encoders.FrozenSamEncoder` (so "tiny" works and
    checkpoints in any format that loader accepts); the prompt encoder and mask decoder are SAM's, loaded from the
    same checkpoint, or seeded random weights when there is none and ``allow_random_weights`` is set.

    Args:
        arch: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"tiny"``.
        checkpoint: SAM checkpoint file, or None.
        allow_random_weights: permit random weights when ``checkpoint`` is None (junk masks; tests only).
    """
    encoder = FrozenSamEncoder(arch=arch, checkpoint=checkpoint, allow_random_weights=allow_random_weights)
    image_encoder = encoder.encoder
    img_size = encoder.img_size
    grid = encoder.embedding_shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16
        )
        mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
    if checkpoint:
        state = load_sam_state_dict(checkpoint)
        prompt_encoder.load_state_dict(submodule_state(state, "prompt_encoder"), strict=True)
        mask_decoder.load_state_dict(submodule_state(state, "mask_decoder"), strict=True)
    sam = Sam(image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)
    return sam.eval().requires_grad_(False)


def assign_mask_classes(masks: Sequence[np.ndarray], label: np.ndarray, num_classes: int) -> list[int]:
    """Class of each class-agnostic mask by the paper's rule.

    A mask takes the foreground class (1..C) whose ground-truth pixels it overlaps most (ties: the lower class).
    A mask that overlaps no foreground takes the class whose ground truth lies nearest to it (Euclidean distance
    from the mask's pixels to that class's pixels). With no foreground in the ground truth, or for an empty mask,
    the class is 0 (the mask is dropped).

    Args:
        masks: boolean masks ``(H, W)``.
        label: ground-truth label map ``(H, W)``, 0 background and 1..C classes.
        num_classes: C.

    Returns:
        one class per mask, in 0..C.
    """
    label = np.asarray(label).astype(np.int64)
    present = [k for k in range(1, num_classes + 1) if (label == k).any()]
    distances: dict[int, np.ndarray] = {}
    classes = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != label.shape:
            raise ValueError(f"mask {mask.shape} and label {label.shape} differ in shape.")
        if not mask.any() or not present:
            classes.append(0)
            continue
        overlap = np.bincount(label[mask], minlength=num_classes + 1)[1 : num_classes + 1]
        if overlap.max() > 0:
            classes.append(int(np.argmax(overlap)) + 1)
            continue
        best, best_distance = 0, np.inf
        for k in present:
            if k not in distances:
                distances[k] = ndimage.distance_transform_edt(label != k)
            d = float(distances[k][mask].min())
            if d < best_distance:
                best, best_distance = k, d
        classes.append(best)
    return classes


def masks_to_label_map(masks: Sequence[np.ndarray], classes: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Paint classed masks into one label map, largest first so that smaller masks stay visible on top."""
    out = np.zeros(shape, dtype=np.int64)
    order = sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i])))
    for i in order:
        if classes[i] > 0:
            out[np.asarray(masks[i], dtype=bool)] = classes[i]
    return out


class ZeroShotSamPredictor:
    """Image + ground truth -> label map: SAM's automatic masks, classed by :func:`assign_mask_classes`.

    Args:
        sam: a segment-anything ``Sam`` (see :func:`build_sam`).
        num_classes: C.
        settings: keyword arguments of ``SamAutomaticMaskGenerator`` (see :data:`AMG_SETTINGS`).
    """

    needs_label = True

    def __init__(self, sam: Sam, num_classes: int, settings: Mapping | None = None) -> None:
        self.generator = SamAutomaticMaskGenerator(sam, **dict(settings or AMG_SETTINGS["full"]))
        self.num_classes = num_classes
        self.num_masks: list[int] = []

    def __call__(self, image: torch.Tensor, label: np.ndarray | None = None) -> np.ndarray:
        """``image`` ``(1, H, W)`` in [0, 1] and its label ``(H, W)`` -> label map ``(H, W)``."""
        if label is None:
            raise ValueError("Zero-shot SAM classes its masks from the ground truth; pass the label.")
        gray = np.asarray(image.detach().cpu().numpy()).reshape(image.shape[-2:])
        rgb = np.repeat((np.clip(gray, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
        with torch.inference_mode():
            proposals = self.generator.generate(rgb)
        masks = [p["segmentation"] for p in proposals]
        self.num_masks.append(len(masks))
        classes = assign_mask_classes(masks, label, self.num_classes)
        return masks_to_label_map(masks, classes, gray.shape)


def evaluate_zero_shot(
    *,
    datalist: str | Path,
    split: str,
    preprocessing: Callable,
    sam: Sam,
    class_names: Sequence[str],
    settings: Mapping | None = None,
    output_dir: str | Path | None = None,
    keep: int = 2,
):
    """Score zero-shot SAM on a datalist split; with ``output_dir``, write ``metrics.json`` and ``metrics.md``.

    Args:
        datalist: Decathlon datalist file (paths relative to its folder).
        split: the split to score, e.g. ``"test"``.
        preprocessing: the bundle's preprocessing (load, channel first, intensity normalisation).
        sam: the ``Sam`` of :func:`build_sam`.
        class_names: names of label values 0..C.
        settings: generator settings (default ``AMG_SETTINGS["full"]``).
        output_dir: where to write the report (None: nothing written).
        keep: predictions kept in the returned evaluation.

    Returns:
        the :class:`~scsam_monai.baselines.evaluation.Evaluation` (scores, seconds per image, examples).
    """
    from monai.data import load_decathlon_datalist

    from scsam_monai.baselines.evaluation import evaluate_predictor, load_test_items
    from scsam_monai.engines.handlers import format_metrics_markdown

    items = load_test_items(load_decathlon_datalist(str(datalist), True, split), preprocessing)
    predictor = ZeroShotSamPredictor(sam, len(class_names) - 1, settings)
    evaluation = evaluate_predictor(predictor, items, len(class_names) - 1, keep=keep, warmup=False)
    if output_dir is not None:
        scores = evaluation.scores
        report = {k: v for k, v in scores.items() if k != "dice"}
        report["dice_per_class"] = {class_names[int(k)]: v for k, v in scores["dice"].items()}
        report.update(
            {
                "num_images": len(items),
                "split": split,
                "seconds_per_image": evaluation.seconds_per_image,
                "masks_per_image": float(np.mean(predictor.num_masks)) if predictor.num_masks else 0.0,
                "amg": dict(settings or AMG_SETTINGS["full"]),
                "class_rule": "ground truth overlapped most; nearest ground-truth class when none",
            }
        )
        atomic_write_json(Path(output_dir) / "metrics.json", json.loads(json.dumps(report, default=str)))
        atomic_write_text(
            Path(output_dir) / "metrics.md", format_metrics_markdown(scores, class_names, "Zero-shot SAM")
        )
    return evaluation
