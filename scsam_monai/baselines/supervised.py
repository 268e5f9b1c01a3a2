"""Supervised baselines: MONAI networks trained on the images themselves, on the same split and augmentation.

Training views are the bundle's (``augmentation`` of ``train.yaml``: random scale-crop, then resize of the
longest side to the network's canvas), padded at the bottom/right to a square canvas as ScSAM's encoders do.
Validation and test images go through :class:`CanvasInferer`: resize-longest, pad, network, crop, resize back,
so every method is scored at the images' full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import Inferer
from monai.losses import DeepSupervisionLoss
from monai.networks.nets import DynUNet
from torch import nn

from scsam_monai.baselines.planning import plan_dynunet
from scsam_monai.networks.geometry import longest_side_size, resize_longest_and_pad, unpad_and_resize

__all__ = ["CanvasInferer", "SupervisedPredictor", "StackedDeepSupervisionLoss", "nnunet_dynunet"]


class CanvasInferer(Inferer):
    """Run a network on images placed on a square canvas and return logits at the images' own size.

    Args:
        canvas_size: side of the square network input; the longest image side is resized to it.
    """

    def __init__(self, canvas_size: int) -> None:
        super().__init__()
        self.canvas_size = int(canvas_size)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        """``inputs`` ``(B, 1, H, W)`` -> logits ``(B, C+1, H, W)``."""
        h, w = (int(s) for s in inputs.shape[-2:])
        canvas = resize_longest_and_pad(inputs.float(), self.canvas_size, mode="bilinear")
        logits = network(canvas, *args, **kwargs)
        size = longest_side_size(h, w, self.canvas_size)
        return unpad_and_resize(logits, size, self.canvas_size, (h, w))


class SupervisedPredictor:
    """Image ``(1, H, W)`` in [0, 1] -> label map ``(H, W)`` (argmax over background and the classes).

    Args:
        network: a trained segmentation network with C+1 output channels.
        canvas_size: its input canvas.
        device: where it runs.
    """

    needs_label = False

    def __init__(self, network: nn.Module, canvas_size: int, device: str | torch.device = "cpu") -> None:
        self.network = network.eval().to(device)
        self.inferer = CanvasInferer(canvas_size)
        self.device = torch.device(device)

    def __call__(self, image: torch.Tensor, label: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode():
            logits = self.inferer(torch.as_tensor(image)[None].to(self.device), self.network)
        return logits.argmax(dim=1)[0].cpu().numpy()


class StackedDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's ``DeepSupervisionLoss`` for ``DynUNet``'s training output, the outputs stacked in dimension 1.

    In training mode a deeply supervised ``DynUNet`` returns ``(B, 1 + deep_supr_num, C, H, W)``, every output
    at full size; this splits it into the list ``DeepSupervisionLoss`` weighs (``"exp"``: 1, 1/2, 1/4, ... as
    nnU-Net). A prediction with as many dimensions as the target (evaluation mode) gets the plain loss.
    """

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.ndim == target.ndim + 1:
            input = list(input.unbind(dim=1))
        return super().forward(input, target)


def nnunet_dynunet(
    *,
    patch_size: Sequence[int],
    in_channels: int = 1,
    out_channels: int = 2,
    spacing: Sequence[float] | None = None,
    base_filters: int = 32,
    max_filters: int = 512,
    deep_supervision: bool = True,
) -> DynUNet:
    """A ``DynUNet`` planned the nnU-Net way (:func:`~.planning.plan_dynunet`): instance norm, leaky ReLU, and
    deep supervision on every decoder level but the two coarsest (train it with
    :class:`StackedDeepSupervisionLoss`).

    Args:
        patch_size: network input size, e.g. ``(256, 256)``.
        in_channels: image channels.
        out_channels: background plus the classes.
        spacing: pixel spacing per axis (None: isotropic).
        base_filters: filters of the first stage (32 in nnU-Net).
        max_filters: filter cap (512 for 2D in nnU-Net).
        deep_supervision: return the decoder's extra outputs in training mode.
    """
    plan = plan_dynunet(patch_size, spacing, base_filters=base_filters, max_filters=max_filters)
    levels = len(plan["strides"])
    return DynUNet(
        spatial_dims=len(patch_size),
        in_channels=in_channels,
        out_channels=out_channels,
        norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision and levels > 2,
        deep_supr_num=max(levels - 3, 1),
        res_block=False,
        **plan,
    )
