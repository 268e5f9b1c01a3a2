"""ScSAM losses: cosine alignment of the two streams, prototype NT-Xent, and Dice (plus optional BCE).

Total loss = ``lambda_cos * L_cos + L_NTX + Dice + lambda_ce * BCE`` with ``lambda_cos = 0.2`` (paper) and
``lambda_ce = 0`` (the paper's loss) by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.utils import one_hot
from torch import nn

__all__ = ["cosine_alignment_loss", "PrototypeNTXentLoss", "ScSAMLoss", "labels_to_one_hot"]


def cosine_alignment_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - mean cosine similarity`` of two feature maps ``(B, N, H, W)``, compared per position."""
    if a.shape != b.shape:
        raise ValueError(f"Aligned streams differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    return 1.0 - F.cosine_similarity(a, b, dim=1).mean()


class PrototypeNTXentLoss(nn.Module):
    """NT-Xent between class embeddings and the prototype bank.

    Each class embedding's positive is its own class prototype, the other prototypes are its negatives:
    ``-log(exp(cos(e, p_y) / tau) / sum_k exp(cos(e, p_k) / tau))``, averaged over embeddings. MONAI's
    ``ContrastiveLoss`` pairs two equally sized views of a batch (SimCLR) and cannot take a fixed bank of
    one anchor per class, hence this short implementation (tested against a hand computation).

    Args:
        temperature: tau (0.07 by default, as in SurgicalSAM).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(self, prototypes: torch.Tensor, embeddings: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """Loss for prototypes ``(C, N)``, embeddings ``(M, N)`` and their class ids ``(M,)`` in 0..C-1.

        With no embeddings (no class in the batch) it returns a zero that still belongs to the graph.
        """
        if embeddings.shape[0] == 0:
            return prototypes.sum() * 0.0
        logits = F.normalize(embeddings, dim=1) @ F.normalize(prototypes, dim=1).T / self.temperature
        return F.cross_entropy(logits, class_ids.long())


def labels_to_one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label map ``(B, 1, H, W)`` or ``(B, H, W)`` -> foreground one-hot ``(B, C, H, W)`` (background dropped).

    The one-hot is MONAI's ``one_hot`` of the ``C + 1`` label values 0..C, without channel 0.

    Args:
        label: label values 0 (background) to ``num_classes``.
        num_classes: C, the foreground classes.

    Raises:
        ValueError: a label value outside 0..C (a label map of other classes would train the wrong targets).
    """
    if label.ndim == 3:
        label = label[:, None]
    label = label.long()
    if label.numel():
        low, high = torch.aminmax(label)
        low, high = int(low), int(high)
        if low < 0 or high > num_classes:
            value = high if high > num_classes else low
            raise ValueError(
                f"label value {value} is out of range: with num_classes={num_classes} the label values are 0 "
                f"(background) to {num_classes}; check the label maps and class_names."
            )
    return one_hot(label, num_classes + 1, dim=1)[:, 1:]


class ScSAMLoss(nn.Module):
    """``lambda_cos * L_cos + L_NTX + Dice`` for the outputs of ``ScSAMHead.forward_with_aux``.

    Dice is MONAI's ``DiceLoss`` on sigmoid probabilities of the per-class masks (each class is decoded as
    its own binary mask), pooled over the batch so that classes absent from one image do not dominate.

    Soft Dice alone has a trap when the mask decoder starts from random weights: while its features do not
    yet separate the classes, raising every logit raises the Dice of a uniform prediction, so all masks drift
    to "everywhere" until the sigmoid saturates and the Dice gradient vanishes (measured on the demo: every
    logit near +25 after 48 steps, Dice gradient exactly 0, validation Dice stuck at 0.25-0.32). A per-pixel
    binary cross-entropy (``lambda_ce > 0``, as SAM pairs focal loss with Dice) penalises every false positive
    and keeps the logits in range.

    Args:
        num_classes: C.
        lambda_cos: weight of the cosine alignment loss (0.2 in the paper).
        temperature: NT-Xent temperature.
        lambda_ntx: weight of the NT-Xent loss (1 in the paper).
        lambda_ce: weight of the per-pixel binary cross-entropy of the per-class mask logits (0 in the paper).
    """

    def __init__(
        self,
        *,
        num_classes: int = 3,
        lambda_cos: float = 0.2,
        temperature: float = 0.07,
        lambda_ntx: float = 1.0,
        lambda_ce: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lambda_cos = lambda_cos
        self.lambda_ntx = lambda_ntx
        if lambda_ce < 0:
            raise ValueError(f"lambda_ce must be >= 0, got {lambda_ce}.")
        self.lambda_ce = lambda_ce
        self.ntxent = PrototypeNTXentLoss(temperature)
        self.dice = DiceLoss(sigmoid=True, batch=True)

    def forward(
        self, logits: torch.Tensor, label: torch.Tensor, aux: dict[str, torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """Loss terms for logits ``(B, C, H, W)`` and the label map ``(B, 1, H, W)`` on the same grid.

        Returns:
            dict with ``loss`` (the total, to back-propagate), ``cos``, ``ntx``, ``dice`` and, when
            ``lambda_ce > 0``, ``ce``.
        """
        if logits.shape[-2:] != label.shape[-2:]:
            raise ValueError(f"Logits {tuple(logits.shape)} and label {tuple(label.shape)} differ in size.")
        target = labels_to_one_hot(label, self.num_classes)
        dice = self.dice(logits.float(), target)
        if aux.get("aligned_sam") is not None and aux.get("aligned_mae") is not None:
            cos = cosine_alignment_loss(aux["aligned_sam"].float(), aux["aligned_mae"].float())
        else:
            cos = logits.new_zeros(())
        ntx = self.ntxent(aux["prototypes"].float(), aux["class_embeddings"].float(), aux["class_ids"])
        total = self.lambda_cos * cos + self.lambda_ntx * ntx + dice
        terms = {"cos": cos.detach(), "ntx": ntx.detach(), "dice": dice.detach()}
        if self.lambda_ce > 0:
            ce = F.binary_cross_entropy_with_logits(logits.float(), target)
            total = total + self.lambda_ce * ce
            terms["ce"] = ce.detach()
        return {"loss": total, **terms}
