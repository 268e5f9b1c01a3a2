"""nnU-Net-style planning of a MONAI ``DynUNet``: kernels, strides and filters from the patch size and spacing.

nnU-Net (Isensee et al., Nature Methods 2021, ``get_pool_and_conv_props``) halves an axis while it is at least
twice the smallest feature map and its spacing is within a factor 2 of the finest axis; an axis whose spacing is
more than twice the finest gets 1-wide kernels until pooling has caught it up. Filters start at 32 and double
per stage up to a cap (512 in 2D). This is the rule of MONAI's DynUNet tutorial, with nnU-Net's limits exposed.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_dynunet"]


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
