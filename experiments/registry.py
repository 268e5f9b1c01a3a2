"""The experiments' methods and groups: which bundle overlays make each row, and which tables it appears in.

Every trainable row is ``train.yaml`` plus overlays from ``bundle/configs/variants/`` plus ``budget.yaml`` and a
profile overlay (``tiny.yaml``, ``small.yaml`` or ``full.yaml``), so a row reruns on its own with
``python -m monai.bundle run training``.
A method that belongs to several groups (ScSAM is the reference row of every ablation) is trained once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GROUPS", "METHODS", "CROSS_DATASET_METHODS", "Method", "select_methods"]

#: Table titles, in the order of results.md.
GROUPS: dict[str, str] = {
    "main": "Main comparison",
    "supervised": "Supervised baselines (MONAI networks trained on the images)",
    "zero_shot": "Zero-shot SAM (automatic mask generator, masks classed by the ground truth they overlap)",
    "lambda": "Ablation: weight lambda of the cosine alignment loss",
    "residual": "Ablation: residual connection of the class activation",
    "fusion": "Ablation: fusion of the SAM and MAE streams",
    "prompts": "Ablation: prompts",
    "cross_dataset": "Cross-dataset (train on one subset, test on the other)",
}


@dataclass(frozen=True)
class Method:
    """One row's recipe.

    Attributes:
        name: identifier, also the folder under ``DIR/runs``.
        kind: ``"scsam"`` (a head on cached embeddings), ``"supervised"`` (a network on images) or ``"zero_shot"``.
        overlays: config files under ``bundle/configs/variants`` applied after ``train.yaml``.
        groups: table -> the row's label in that table.
        overrides: bundle overrides applied after the runner's ``--override`` values: what the row must keep
            whatever the user passes for every row (the random-MAE twin keeps its random MAE).
    """

    name: str
    kind: str
    overlays: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


_SUP = ("supervised.yaml",)
METHODS: tuple[Method, ...] = (
    Method(
        "scsam",
        "scsam",
        ("scsam.yaml",),
        {
            "main": "ScSAM",
            "supervised": "ScSAM",
            "zero_shot": "ScSAM",
            "lambda": "lambda = 0.2 (ScSAM)",
            "residual": "with residual (ScSAM)",
            "fusion": "FAFM (ScSAM)",
            "prompts": "dense + sparse (ScSAM)",
        },
    ),
    Method("scsam_no_fafm", "scsam", ("scsam_no_fafm.yaml",), {"main": "ScSAM w/o FAFM", "fusion": "concat"}),
    Method("sam_only", "scsam", ("sam_only.yaml",), {"main": "SAM*"}),
    Method("mae_only", "scsam", ("mae_only.yaml",), {"main": "MAE*"}),
    Method(
        "mae_only_random",
        "scsam",
        ("mae_only.yaml", "mae_random.yaml"),
        {"main": "MAE* (random MAE)"},
        {"mae_checkpoint": None, "mae_allow_random_weights": True},
    ),
    Method("surgicalsam", "scsam", ("surgicalsam.yaml",), {"main": "SurgicalSAM-style"}),
    Method("lambda_0.1", "scsam", ("lambda_0.1.yaml",), {"lambda": "lambda = 0.1"}),
    Method("lambda_0.3", "scsam", ("lambda_0.3.yaml",), {"lambda": "lambda = 0.3"}),
    Method("no_residual", "scsam", ("no_residual.yaml",), {"residual": "without residual"}),
    Method("fusion_cross_attention", "scsam", ("fusion_cross_attention.yaml",), {"fusion": "cross-attention"}),
    Method("prompts_dense", "scsam", ("prompts_dense.yaml",), {"prompts": "dense only"}),
    Method("prompts_sparse", "scsam", ("prompts_sparse.yaml",), {"prompts": "sparse only"}),
    Method("unet", "supervised", (*_SUP, "unet.yaml"), {"supervised": "UNet"}),
    Method("attention_unet", "supervised", (*_SUP, "attention_unet.yaml"), {"supervised": "AttentionUnet"}),
    Method("dynunet", "supervised", (*_SUP, "dynunet.yaml"), {"supervised": "DynUNet (nnU-Net plan)"}),
    Method("swin_unetr", "supervised", (*_SUP, "swin_unetr.yaml"), {"supervised": "SwinUNETR (2D)"}),
    Method("zero_shot_sam", "zero_shot", ("zero_shot_sam.yaml",), {"zero_shot": "SAM automatic mask generator"}),
)

#: Methods trained and tested in each cross-dataset direction.
CROSS_DATASET_METHODS: tuple[str, ...] = ("scsam", "sam_only", "mae_only", "unet")


def select_methods(names: list[str] | None = None, groups: list[str] | None = None) -> list[Method]:
    """Methods named in ``names`` and/or belonging to ``groups`` (both None: all), in registry order.

    Raises:
        ValueError: an unknown method or group name.
    """
    known = {m.name for m in METHODS}
    unknown = sorted(set(names or ()) - known) + sorted(set(groups or ()) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown method or group {unknown}; methods: {sorted(known)}, groups: {list(GROUPS)}.")
    if not names and not groups:
        return list(METHODS)
    return [m for m in METHODS if m.name in (names or ()) or set(m.groups) & set(groups or ())]
