"""Planning: the training budget of every experiments row, and a MONAI ``DynUNet`` planned the nnU-Net way.

**Budget.** Every trainable row sees the same number of training samples, one sample being one augmented view of
one slice. ScSAM rows see ``views_per_image`` cached views of each training slice per epoch, supervised rows one
random view per slice per epoch, so a supervised row runs ``views_per_image`` times as many epochs;
:func:`plan_budget` turns the budget into epochs (the cosine schedule's length follows ``max_epochs``) and a
validation interval in epochs, so that every row validates after the same number of samples and early stopping's
patience (in validations) means the same for all.

**DynUNet.** nnU-Net (Isensee et al., Nature Methods 2021, ``get_pool_and_conv_props``) halves an axis while it
is at least twice the smallest feature map and its spacing is within a factor 2 of the finest axis; an axis whose
spacing is more than twice the finest gets 1-wide kernels until pooling has caught it up. Filters start at 32 and
double per stage up to a cap (512 in 2D). This is the rule of MONAI's DynUNet tutorial, with nnU-Net's limits exposed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["BudgetPlan", "plan_budget", "plan_dynunet"]


@dataclass(frozen=True)
class BudgetPlan:
    """One row's share of the budget.

    Attributes:
        budget_samples: training samples the row may see (one sample = one augmented view of one slice).
        samples_per_epoch: samples of one epoch of this row.
        max_epochs: epochs that fit the budget (at least 1).
        validation_interval: epochs between validations (every row validates after the same samples).
        steps_per_epoch: optimizer steps per epoch (``ceil(samples_per_epoch / batch_size)``).
        max_steps: optimizer steps of the whole budget.
    """

    budget_samples: int
    samples_per_epoch: int
    max_epochs: int
    validation_interval: int
    steps_per_epoch: int
    max_steps: int

    def overrides(self) -> dict[str, int]:
        """Bundle overrides that apply the plan (``train.yaml`` and ``supervised.yaml`` share these keys)."""
        return {"train#trainer#max_epochs": self.max_epochs, "validate#interval": self.validation_interval}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_budget(
    *,
    budget_per_slice: int,
    num_slices: int,
    views_per_epoch: int,
    batch_size: int,
    views_per_validation: int,
) -> BudgetPlan:
    """Epochs and validation interval of one row from a budget of samples per training slice.

    Args:
        budget_per_slice: samples per training slice over the whole training (e.g. 100 epochs x 4 views = 400).
        num_slices: training slices.
        views_per_epoch: samples per slice in one epoch of this row (``views_per_image`` for ScSAM rows, whose
            cached views are all seen every epoch; 1 for supervised rows).
        batch_size: the row's training batch size.
        views_per_validation: samples per slice between two validations, the same for every row (the ScSAM rows'
            ``views_per_image``: they validate after every epoch).

    Raises:
        ValueError: a count that is not positive, or a budget smaller than one epoch of the row.
    """
    values = {
        "budget_per_slice": budget_per_slice,
        "num_slices": num_slices,
        "views_per_epoch": views_per_epoch,
        "batch_size": batch_size,
        "views_per_validation": views_per_validation,
    }
    bad = {k: v for k, v in values.items() if int(v) < 1}
    if bad:
        raise ValueError(f"budget plan: these counts must be positive: {bad}.")
    if budget_per_slice < views_per_epoch:
        raise ValueError(
            f"budget plan: a budget of {budget_per_slice} samples per slice is less than one epoch of this row "
            f"({views_per_epoch} views per slice); raise the budget or lower views_per_image."
        )
    samples_per_epoch = num_slices * views_per_epoch
    max_epochs = budget_per_slice // views_per_epoch
    steps_per_epoch = math.ceil(samples_per_epoch / batch_size)
    return BudgetPlan(
        budget_samples=budget_per_slice * num_slices,
        samples_per_epoch=samples_per_epoch,
        max_epochs=max_epochs,
        validation_interval=max(1, round(views_per_validation / views_per_epoch)),
        steps_per_epoch=steps_per_epoch,
        max_steps=max_epochs * steps_per_epoch,
    )


def plan_dynunet(
    patch_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    *,
    min_feature_map_size: int = 4,
    max_pools: int = 6,
    base_filters: int = 32,
    max_filters: int = 512,
) -> dict[str, list]:
    """DynUNet arguments for a patch size and voxel spacing, planned the nnU-Net way.

    Args:
        patch_size: network input size per axis, e.g. ``(256, 256)``.
        spacing: voxel spacing per axis (any unit); None for isotropic.
        min_feature_map_size: an axis is pooled only while it stays at least this large after pooling.
        max_pools: most down-sampling steps of any axis.
        base_filters: filters of the first stage.
        max_filters: cap on the filters of any stage.

    Returns:
        dict with ``kernel_size``, ``strides``, ``upsample_kernel_size`` (lists of per-axis lists) and
        ``filters`` (one per stage), ready for ``DynUNet(spatial_dims=len(patch_size), ..., **plan)``.

    Raises:
        ValueError: a patch side is not positive, spacing has another length or a non-positive value, or a
            pooled axis is not divisible by 2 (nnU-Net pads patches to a multiple of 2**pools; do so first).

    Example::

        >>> plan_dynunet((128, 128))["strides"]
        [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]]
    """
    sizes = [int(s) for s in patch_size]
    spacings = [1.0] * len(sizes) if spacing is None else [float(s) for s in spacing]
    if len(spacings) != len(sizes):
        raise ValueError(f"spacing {tuple(spacings)} and patch_size {tuple(sizes)} differ in length.")
    if any(s <= 0 for s in sizes) or any(s <= 0 for s in spacings):
        raise ValueError(f"patch_size {tuple(sizes)} and spacing {tuple(spacings)} must be positive.")
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    pools = [0] * len(sizes)
    while True:
        finest = min(spacings)
        ratio = [s / finest for s in spacings]
        stride = [
            2 if r <= 2 and size >= 2 * min_feature_map_size and p < max_pools else 1
            for r, size, p in zip(ratio, sizes, pools, strict=True)
        ]
        if all(s == 1 for s in stride):
            break
        for size, s in zip(sizes, stride, strict=True):
            if size % s:
                raise ValueError(f"patch side {size} is not divisible by 2; pad patch_size {tuple(patch_size)} first.")
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
        pools = [p + (s == 2) for p, s in zip(pools, stride, strict=True)]
    kernels.append([3] * len(sizes))  # the bottleneck stage
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return {
        "kernel_size": kernels,
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": filters,
    }
