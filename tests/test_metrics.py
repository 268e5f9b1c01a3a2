"""Tests of scsam_monai.metrics: hand-computed scores, edge cases, loop references, MONAI metric and handler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import StatsHandler, from_engine
from monai.transforms import AsDiscreted
from scipy import ndimage

from scsam_monai.metrics import (
    SCALAR_KEYS,
    SegmentationScoresHandler,
    SegmentationScoresMetric,
    segmentation_scores,
)

A = np.array


def assert_scores_close(actual: dict, expected: dict) -> None:
    """Compare two score dicts key by key (NaN equals NaN), including the per-class dicts."""
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert set(actual[key]) == set(value), key
            for c in value:
                np.testing.assert_allclose(actual[key][c], value[c], err_msg=f"{key}[{c}]")
        else:
            np.testing.assert_allclose(actual[key], value, err_msg=key)


def test_perfect_prediction_scores_one() -> None:
    label = A([[1, 1, 0], [0, 2, 2]])
    scores = segmentation_scores([label], [label.copy()], num_classes=2)
    for key in SCALAR_KEYS:
        assert scores[key] == pytest.approx(1.0), key
    assert scores["dice"] == {1: 1.0, 2: 1.0}
    assert scores["class_iou"] == {1: 1.0, 2: 1.0}


def test_disjoint_prediction_scores_zero() -> None:
    # class 1: pred pixel (0,0), gt pixel (1,1): I = 0, U = 2; AJI: no pair, union = 1 + 1.
    scores = segmentation_scores([A([[1, 0], [0, 0]])], [A([[0, 0], [0, 1]])], num_classes=1)
    for key in SCALAR_KEYS:
        assert scores[key] == 0.0, key
    assert scores["dice"] == {1: 0.0}


def test_all_background_prediction_scores_zero_and_counts_in_pooled_union() -> None:
    preds = [np.zeros((2, 2), int), A([[1, 0], [0, 0]])]
    labels = [A([[1, 1], [0, 2]]), A([[1, 0], [0, 0]])]
    scores = segmentation_scores(preds, labels, num_classes=2)
    # image 0: class 1 IoU 0/2, class 2 IoU 0/1 -> image mean 0; image 1: class 1 IoU 1/1 -> 1.
    assert scores["challenge_iou"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert scores["iou"] == pytest.approx(0.5)
    # class 1: (0 + 1) / 2 = 0.5; class 2: 0 -> 0.25
    assert scores["class_iou"] == pytest.approx({1: 0.5, 2: 0.0})
    assert scores["mc_iou"] == pytest.approx(0.25)
    # pooled: I = 0 + 1, U = (2 + 1) + 1 = 4 (ISINet would leave image 0 out: 1 / 1)
    assert scores["miou"] == pytest.approx(0.25)
    # dice class 1: 2 * 1 / (P 0 + 1 + G 2 + 1) = 0.5; class 2: 0 / (0 + 1) = 0
    assert scores["dice"] == pytest.approx({1: 0.5, 2: 0.0})
    assert scores["dice_mean"] == pytest.approx(0.25)
    # AJI class 1: (0 + 1) / 2; class 2: 0 -> 0.25
    assert scores["aji"] == pytest.approx(0.25)


def test_images_empty_in_both_are_skipped() -> None:
    preds = [A([[1, 1], [0, 0]]), A([[0, 1], [0, 0]])]
    labels = [A([[1, 0], [0, 0]]), A([[0, 1], [0, 0]])]
    empty = np.zeros((2, 2), int)
    base = segmentation_scores(preds, labels, num_classes=1)
    with_empty = segmentation_scores([empty, *preds, empty], [empty, *labels, empty], num_classes=1)
    assert_scores_close(with_empty, base)
    # image 0: IoU 1/2, image 1: 1 -> 0.75 (an empty image counted as 0 or 1 would move it)
    assert base["iou"] == pytest.approx(0.75)


def test_no_foreground_anywhere_gives_nan() -> None:
    empty = np.zeros((3, 3), int)
    scores = segmentation_scores([empty, empty], [empty, empty], num_classes=2)
    for key in SCALAR_KEYS:
        assert math.isnan(scores[key]), key
    assert all(math.isnan(v) for v in scores["dice"].values())
    assert all(math.isnan(v) for v in segmentation_scores([], [], num_classes=2)["dice"].values())


def test_class_absent_everywhere_is_nan_and_left_out_of_means() -> None:
    label = A([[1, 1], [0, 0]])
    scores = segmentation_scores([A([[1, 0], [0, 0]])], [label], num_classes=3)
    assert scores["dice"][1] == pytest.approx(2 / 3)  # 2 * 1 / (1 + 2)
    assert math.isnan(scores["dice"][2]) and math.isnan(scores["dice"][3])
    assert math.isnan(scores["class_iou"][2])
    assert scores["dice_mean"] == pytest.approx(2 / 3)
    assert scores["mc_iou"] == pytest.approx(0.5)


def test_class_only_in_prediction_counts_in_iou_not_challenge_iou() -> None:
    # class 1: I = 2, U = 2 -> 1; class 2 only predicted: I = 0, U = 1 -> 0.
    scores = segmentation_scores([A([[1, 1], [2, 0]])], [A([[1, 1], [0, 0]])], num_classes=2)
    assert scores["challenge_iou"] == pytest.approx(1.0)  # ground truth holds class 1 only
    assert scores["iou"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert scores["mc_iou"] == pytest.approx(0.5)
    assert scores["miou"] == pytest.approx(2 / 3)  # (2 + 0) / (2 + 1)
    assert scores["dice"] == pytest.approx({1: 1.0, 2: 0.0})
    assert scores["aji"] == pytest.approx(0.5)  # class 1: 1; class 2: unpaired prediction 0 / 1


def test_miou_is_pooled_while_mc_iou_averages_images() -> None:
    preds = [A([[1, 1, 1, 1]]), A([[0, 1, 0, 0]])]
    labels = [A([[1, 1, 1, 1]]), A([[1, 0, 0, 0]])]
    scores = segmentation_scores(preds, labels, num_classes=1)
    assert scores["mc_iou"] == pytest.approx(0.5)  # (4/4 + 0/2) / 2
    assert scores["miou"] == pytest.approx(4 / 6)  # (4 + 0) / (4 + 2)


def test_mc_iou_averages_classes_while_iou_averages_images() -> None:
    preds = [A([[1, 1, 0, 0]]), A([[1, 0, 0, 0]])]
    labels = [A([[1, 1, 2, 0]]), A([[1, 0, 0, 0]])]
    scores = segmentation_scores(preds, labels, num_classes=2)
    # image 0: class 1 IoU 1, class 2 IoU 0 -> 0.5; image 1: class 1 IoU 1 -> 1
    assert scores["iou"] == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert scores["mc_iou"] == pytest.approx(0.5)  # class 1: (1 + 1) / 2, class 2: 0
    assert scores["miou"] == pytest.approx(3 / 4)  # I = 2 + 1, U = (2 + 1) + 1


def test_aji_two_ground_truth_instances_merged_into_one_prediction() -> None:
    # gt instances A = cols 0-1, B = cols 3-4 (area 2 each); one predicted instance of area 5.
    # A and B both pair with it: I = 2 + 2, U = 5 + 5 -> 0.4 (pixel IoU would be 4/5).
    scores = segmentation_scores([A([[1, 1, 1, 1, 1]])], [A([[1, 1, 0, 1, 1]])], num_classes=1)
    assert scores["aji"] == pytest.approx(0.4)
    assert scores["iou"] == pytest.approx(0.8)


def test_aji_counts_unpaired_false_positive_instance() -> None:
    # As above plus a predicted instance at col 6 (area 1) that pairs with no gt instance:
    # I = 2 + 2, U = 5 + 5 + 1 -> 4/11.
    scores = segmentation_scores([A([[1, 1, 1, 1, 1, 0, 1]])], [A([[1, 1, 0, 1, 1, 0, 0]])], num_classes=1)
    assert scores["aji"] == pytest.approx(4 / 11)


def test_aji_pairs_with_highest_iou_and_counts_unmatched_ground_truth() -> None:
    # gt A = cols 0-3 (area 4), gt B = col 6 (area 1, overlaps nothing).
    # pred P1 = col 0 (IoU with A 1/4), P2 = cols 2-4 (IoU with A 2/5) -> A pairs with P2: I 2, U 5.
    # B unpaired adds 1, P1 unpaired adds 1: AJI = 2 / 7.
    scores = segmentation_scores([A([[1, 0, 1, 1, 1, 0, 0]])], [A([[1, 1, 1, 1, 0, 0, 1]])], num_classes=1)
    assert scores["aji"] == pytest.approx(2 / 7)


def test_aji_instances_are_eight_connected() -> None:
    # Diagonal gt pixels form one instance (area 2) inside one predicted instance (area 4): 2 / 4.
    # With 4-connectivity they would be two instances: (1 + 1) / (4 + 4) = 0.25.
    scores = segmentation_scores([A([[1, 1], [1, 1]])], [A([[1, 0], [0, 1]])], num_classes=1)
    assert scores["aji"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "pred, label, num_classes, message",
    [
        ([A([[1]])], [A([[1]]), A([[1]])], 1, "1 predictions but 2 labels"),
        ([A([[1]]), A([[1, 0]])], [A([[1]]), A([[1], [0]])], 1, "Image 1: prediction shape"),
        ([A([[1]]), A([[3]])], [A([[1]]), A([[1]])], 2, "Image 1: prediction values must lie in 0..2"),
        ([A([[1]]), A([[1]])], [A([[1]]), A([[-1]])], 2, "Image 1: label values"),
        ([A([[1]]), A([[0.5]])], [A([[1]]), A([[0]])], 2, "Image 1: prediction holds values that are not int"),
        ([A([[1]]), A([[np.nan]])], [A([[1]]), A([[0]])], 2, "Image 1: prediction holds values that are not int"),
        ([A([[1]]), np.zeros((1, 2, 2))], [A([[1]]), np.zeros((1, 2, 2))], 2, "Image 1: prediction must be a 2D"),
        ([A([["a"]])], [A([[1]])], 2, "Image 0: prediction must hold numbers"),
        ([A([[1]])], [A([[1]])], 0, "num_classes must be a positive integer"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_image(pred, label, num_classes, message) -> None:
    with pytest.raises(ValueError, match=message):
        segmentation_scores(pred, label, num_classes)


def random_maps(rng: np.random.Generator, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """Blobby random label map: coarse noise upsampled, so instances have several pixels."""
    coarse = rng.integers(0, num_classes + 1, size=(shape[0] // 2 + 1, shape[1] // 2 + 1))
    return np.kron(coarse, np.ones((2, 2), int))[: shape[0], : shape[1]]


def test_torch_tensor_input_equals_numpy_input() -> None:
    rng = np.random.default_rng(0)
    preds = [random_maps(rng, (9, 11), 3) for _ in range(4)]
    labels = [random_maps(rng, (9, 11), 3) for _ in range(4)]
    expected = segmentation_scores(preds, labels, num_classes=3)
    actual = segmentation_scores(
        [torch.from_numpy(p).float() for p in preds], [torch.from_numpy(g) for g in labels], num_classes=3
    )
    assert_scores_close(actual, expected)


def reference_scores(preds: list, labels: list, num_classes: int) -> dict:
    """Per-pixel loops as in ISINet's eval_endovis and HoVer-Net's get_fast_aji, with our conventions."""
    eight = np.ones((3, 3), bool)
    image_iou, image_iou_gt, cum_i, cum_u = [], [], 0, 0
    class_iou = {c: [] for c in range(1, num_classes + 1)}
    class_aji = {c: [] for c in range(1, num_classes + 1)}
    for pred, label in zip(preds, labels, strict=True):
        ious, ious_gt = [], []
        for c in range(1, num_classes + 1):
            p, g = pred == c, label == c
            if not (p.any() or g.any()):
                continue
            i, u = (p & g).sum(), (p | g).sum()
            cum_i, cum_u = cum_i + i, cum_u + u
            ious.append(i / u)
            class_iou[c].append(i / u)
            if g.any():
                ious_gt.append(i / u)
            gt_ids, n_gt = ndimage.label(g, eight)
            pred_ids, n_pred = ndimage.label(p, eight)
            inter, union, used = 0, 0, set()
            for t in range(1, n_gt + 1):
                t_mask = gt_ids == t
                best, best_iou = None, 0.0
                for q in range(1, n_pred + 1):
                    q_mask = pred_ids == q
                    pair_iou = (t_mask & q_mask).sum() / (t_mask | q_mask).sum()
                    if pair_iou > best_iou:
                        best, best_iou = q, pair_iou
                if best is None:
                    union += t_mask.sum()
                else:
                    used.add(best)
                    inter += (t_mask & (pred_ids == best)).sum()
                    union += (t_mask | (pred_ids == best)).sum()
            union += sum((pred_ids == q).sum() for q in range(1, n_pred + 1) if q not in used)
            class_aji[c].append(inter / union)
        if ious:
            image_iou.append(np.mean(ious))
        if ious_gt:
            image_iou_gt.append(np.mean(ious_gt))
    class_means = [np.mean(v) for v in class_iou.values() if v]
    return {
        "challenge_iou": np.mean(image_iou_gt),
        "iou": np.mean(image_iou),
        "mc_iou": np.mean(class_means),
        "miou": cum_i / cum_u,
        "aji": np.mean([np.mean(v) for v in class_aji.values() if v]),
    }


def test_matches_per_pixel_loop_reference_on_random_maps() -> None:
    rng = np.random.default_rng(1)
    shapes = [(10, 12), (7, 9), (12, 12), (5, 16), (9, 9)]
    preds = [random_maps(rng, s, 3) for s in shapes]
    labels = [random_maps(rng, s, 3) for s in shapes]
    labels[1][labels[1] == 3] = 0  # a class only predicted in one image
    preds[2] = np.zeros(shapes[2], int)  # an all-background prediction
    scores = segmentation_scores(preds, labels, num_classes=3)
    for key, value in reference_scores(preds, labels, 3).items():
        assert scores[key] == pytest.approx(value), key


def test_cumulative_metric_over_iterations_of_different_sizes_equals_function() -> None:
    rng = np.random.default_rng(2)
    batch_pred, batch_label = (np.stack([random_maps(rng, (4, 5), 2) for _ in range(2)]) for _ in range(2))
    list_shapes = [(6, 3), (3, 7)]
    list_pred = [random_maps(rng, s, 2) for s in list_shapes]
    list_label = [random_maps(rng, s, 2) for s in list_shapes]

    metric = SegmentationScoresMetric(num_classes=2)
    metric(y_pred=torch.from_numpy(batch_pred)[:, None].float(), y=torch.from_numpy(batch_label)[:, None])
    metric(y_pred=[torch.from_numpy(p)[None] for p in list_pred], y=[torch.from_numpy(g)[None] for g in list_label])
    expected = segmentation_scores([*batch_pred, *list_pred], [*batch_label, *list_label], num_classes=2)
    assert_scores_close(metric.aggregate(), expected)
    assert tuple(metric.per_image_iou().shape) == (4, 2)

    metric.reset()
    assert math.isnan(metric.aggregate()["dice_mean"])
    metric(y_pred=torch.from_numpy(batch_pred), y=torch.from_numpy(batch_label))  # (B, H, W) also accepted
    assert_scores_close(metric.aggregate(), segmentation_scores(list(batch_pred), list(batch_label), 2))


def test_cumulative_metric_errors_count_images_since_reset() -> None:
    metric = SegmentationScoresMetric(num_classes=1)
    metric(y_pred=torch.zeros(2, 1, 3, 3), y=torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="Image 3: label values must lie in 0..1"):
        metric(y_pred=torch.zeros(2, 1, 3, 3), y=torch.stack([torch.zeros(1, 3, 3), torch.full((1, 3, 3), 2.0)]))
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\)"):
        metric(y_pred=torch.zeros(2, 3, 3, 3), y=torch.zeros(2, 3, 3, 3))


class OneHotNet(torch.nn.Module):
    """Turns an image that already holds a label map into one-hot logits ``(B, C + 1, H, W)``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_hot = torch.nn.functional.one_hot(x[:, 0].long(), self.num_classes + 1)
        return one_hot.permute(0, 3, 1, 2).float() * self.scale


def test_handler_is_key_metric_of_supervised_evaluator() -> None:
    # image 0 (2x2): prediction all background, gt class 1 (2 px) and class 2 (1 px);
    # image 1 (3x3): prediction class 1 on 3 px, gt class 1 on 1 of them.
    data = [
        {"image": torch.zeros(1, 2, 2), "label": torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])},
        {
            "image": torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]),
            "label": torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]),
        },
    ]
    handler = SegmentationScoresHandler(num_classes=2, output_transform=from_engine(["pred", "label"]))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=1),
        network=OneHotNet(num_classes=2),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        key_val_metric={"val_mean_dice": handler},
        val_handlers=[StatsHandler(iteration_log=False)],  # it flattens and sorts engine.state.metrics
    )
    evaluator.run()

    # dice class 1: 2 * (0 + 1) / (P 0 + 3 + G 2 + 1) = 1/3; class 2: 0 / (0 + 1) = 0 -> mean 1/6
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(1 / 6)
    assert evaluator.state.best_metric == pytest.approx(1 / 6)
    scores = handler.last_scores
    assert scores["miou"] == pytest.approx(1 / 6)  # I = 0 + 1, U = (2 + 1) + 3
    # AJI class 1: image 0 has no prediction -> 0, image 1: 1 / 3 -> 1/6; class 2: 0 -> 1/12
    assert scores["aji"] == pytest.approx(1 / 12)
    assert scores["dice"] == pytest.approx({1: 1 / 3, 2: 0.0})
    metrics = evaluator.state.metrics
    assert metrics["val_mean_dice_miou"] == pytest.approx(1 / 6)
    assert metrics["val_mean_dice_dice_1"] == pytest.approx(1 / 3)
    assert metrics["val_mean_dice_class_iou_2"] == pytest.approx(0.0)  # image 0: 0 / 1
    details = evaluator.state.metric_details["val_mean_dice"].numpy()
    np.testing.assert_allclose(details, [[0.0, 0.0], [1 / 3, np.nan]])


def test_handler_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="key must be one of"):
        SegmentationScoresHandler(num_classes=2, key="dice")


def test_absurd_num_classes_is_a_value_error_not_an_allocation() -> None:
    label = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="num_classes must be at most 4096"):
        segmentation_scores([label], [label], num_classes=10**9)
    scores = segmentation_scores([label + 1], [label + 1], num_classes=4096)  # memory follows the values present
    assert scores["dice"][1] == 1.0 and np.isnan(scores["dice"][4096])


def test_inputs_that_are_not_arrays_are_value_errors() -> None:
    with pytest.raises(ValueError, match="Image 0: prediction is not an array"):
        segmentation_scores([[[1, 2], [3]]], [np.zeros((2, 2))], num_classes=3)


def test_aji_of_tens_of_thousands_of_instances_fits_in_memory() -> None:
    """65,536 isolated instances in prediction and ground truth: a dense instance table would need 34 GB."""
    label = np.zeros((512, 512), int)
    label[::2, ::2] = 1
    pred = label.copy()
    pred[0, 0] = 0  # one ground-truth instance left unpaired
    scores = segmentation_scores([pred], [label], num_classes=1)
    assert scores["aji"] == pytest.approx((65536 - 1) / 65536)
