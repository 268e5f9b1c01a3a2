"""Tests of scsam_monai.losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from scsam_monai.losses import PrototypeNTXentLoss, ScSAMLoss, cosine_alignment_loss, labels_to_one_hot


def test_cosine_alignment_loss_hand_values():
    a = torch.zeros(1, 2, 1, 2)
    b = torch.zeros(1, 2, 1, 2)
    a[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    b[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # cos = 1
    a[0, :, 0, 1] = torch.tensor([1.0, 0.0])
    b[0, :, 0, 1] = torch.tensor([0.0, 2.0])  # cos = 0
    torch.testing.assert_close(cosine_alignment_loss(a, b), torch.tensor(0.5))
    torch.testing.assert_close(cosine_alignment_loss(a, a), torch.tensor(0.0))
    with pytest.raises(ValueError, match="shape"):
        cosine_alignment_loss(a, b[..., :1])


def test_prototype_ntxent_against_hand_computation():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    embeddings = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    ids = torch.tensor([0, 1])
    tau = 0.5
    # embedding 0: cos to p0 = 1, to p1 = 0 -> -log(e^2 / (e^2 + e^0))
    # embedding 1: cos to p0 = cos to p1 = 1/sqrt(2) -> -log(1/2)
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    loss = PrototypeNTXentLoss(temperature=tau)(prototypes, embeddings, ids)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_prototype_ntxent_lower_temperature_sharpens_and_empty_batch_is_zero():
    prototypes = torch.eye(3, requires_grad=True)
    embeddings = torch.eye(3)
    ids = torch.arange(3)
    assert PrototypeNTXentLoss(0.07)(prototypes, embeddings, ids) < PrototypeNTXentLoss(1.0)(
        prototypes, embeddings, ids
    )
    empty = PrototypeNTXentLoss()(prototypes, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph
    with pytest.raises(ValueError):
        PrototypeNTXentLoss(0.0)


def test_labels_to_one_hot_drops_background():
    label = torch.tensor([[[[0, 1], [2, 3]]]])
    one_hot = labels_to_one_hot(label, 3)
    assert one_hot.shape == (1, 3, 2, 2)
    assert one_hot[0, :, 1, 1].tolist() == [0.0, 0.0, 1.0]
    assert one_hot[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert one_hot.dtype == torch.float32 and torch.equal(labels_to_one_hot(label[:, 0], 3), one_hot)


@pytest.mark.parametrize("value", [9, 4, -1])
def test_labels_to_one_hot_refuses_label_values_outside_the_classes(value):
    """A label value 9 with 3 classes is an error naming both, not a silent last class."""
    label = torch.tensor([[[[0, 1], [2, value]]]])
    with pytest.raises(ValueError, match=rf"label value {value} .*num_classes=3"):
        labels_to_one_hot(label, 3)


def test_total_is_weighted_sum_of_terms():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 4, (2, 1, 8, 8))
    aux = {
        "aligned_sam": torch.randn(2, 4, 2, 2),
        "aligned_mae": torch.randn(2, 4, 2, 2),
        "prototypes": torch.randn(3, 4),
        "class_embeddings": torch.randn(5, 4),
        "class_ids": torch.tensor([0, 1, 2, 0, 1]),
    }
    terms = ScSAMLoss(num_classes=3, lambda_cos=0.2)(logits, label, aux)
    torch.testing.assert_close(terms["loss"], 0.2 * terms["cos"] + terms["ntx"] + terms["dice"])
    assert terms["cos"] == cosine_alignment_loss(aux["aligned_sam"], aux["aligned_mae"])
    # a perfect, confident prediction has (almost) zero Dice loss
    perfect = labels_to_one_hot(label, 3) * 40 - 20
    assert ScSAMLoss(num_classes=3)(perfect, label, aux)["dice"] < 1e-3


def test_single_stream_has_no_alignment_term():
    logits = torch.randn(1, 3, 4, 4)
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    aux = {
        "aligned_sam": None,
        "aligned_mae": None,
        "prototypes": torch.randn(3, 4),
        "class_embeddings": torch.zeros(0, 4),
        "class_ids": torch.zeros(0, dtype=torch.long),
    }
    terms = ScSAMLoss(num_classes=3)(logits, label, aux)
    assert terms["cos"] == 0 and terms["ntx"] == 0


def _aux() -> dict:
    return {
        "aligned_sam": None,
        "aligned_mae": None,
        "prototypes": torch.randn(3, 4),
        "class_embeddings": torch.zeros(0, 4),
        "class_ids": torch.zeros(0, dtype=torch.long),
    }


def test_bce_term_is_added_with_its_weight():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 4, (2, 1, 8, 8))
    paper = ScSAMLoss(num_classes=3)(logits, label, _aux())
    assert "ce" not in paper  # the paper's loss is unchanged by default
    terms = ScSAMLoss(num_classes=3, lambda_ce=0.5)(logits, label, _aux())
    target = labels_to_one_hot(label, 3)
    p = torch.sigmoid(logits)
    by_hand = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(terms["ce"], by_hand)
    torch.testing.assert_close(terms["loss"], paper["loss"] + 0.5 * by_hand)
    with pytest.raises(ValueError, match="lambda_ce"):
        ScSAMLoss(lambda_ce=-1.0)


def test_bce_pulls_saturated_everywhere_masks_back_where_dice_alone_cannot():
    # the demo's failure: every mask "on" everywhere with saturated logits; Dice has no gradient left
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[..., :4, :4] = 1
    logits = torch.full((1, 3, 8, 8), 25.0, requires_grad=True)
    ScSAMLoss(num_classes=3)(logits, label, _aux())["loss"].backward()
    assert logits.grad.abs().max() < 1e-6
    logits.grad = None
    ScSAMLoss(num_classes=3, lambda_ce=1.0)(logits, label, _aux())["loss"].backward()
    background = labels_to_one_hot(label, 3) == 0
    assert (logits.grad[background] > 1e-3).all()  # gradient descent lowers every false-positive logit
