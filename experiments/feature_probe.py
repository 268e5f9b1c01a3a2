"""Linear probes of frozen encoder features: what a linear map reads from them about the classes and the pixels.

Does the EM pre-trained MAE help? The head training of the experiments (FAFM, class-prompt
encoder, mask decoder; 48 Adam steps in the small profile) answers it end to end, but it mixes what the features
hold with how the head's optimisation uses them. A linear probe separates the first: a closed-form ridge regression,
fitted on the training slices, from each token's features to

- the class fractions of the token's patch (background included); on the test slices the fractions are upsampled
  bilinearly to the label grid and the argmax is the predicted label map, scored with per-class Dice
  (``monai.metrics.compute_dice``, mean over the test images where the class appears);
- the token's patch of pixels; the test R^2 says how much of the image the features keep.

No seeds, no schedule, seconds on a CPU for the tiny encoders. Features are standardised with the training
statistics first (as MAE's own linear probing normalises them), so scale differences between encoders do not count.

Run: ``python -m experiments.feature_probe --datalist OUT/data/datalist.json
--mae-checkpoint OUT/mae/mae_encoder.pth --out OUT/feature_probe`` (see ``experiments/results/real_em.md``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.metrics import compute_dice

from experiments.datalists import class_names_of
from scsam_monai.atomic import atomic_write_json, atomic_write_text
from scsam_monai.data.normalize import PREPARED_SLICE_WINDOW, normalize_slice
from scsam_monai.io.readers import read_image_2d
from scsam_monai.startup_checks.datalist import read_split

__all__ = [
    "fit_ridge",
    "fixed_pattern_share",
    "format_probe",
    "image_dependent_variance",
    "main",
    "patch_class_fractions",
    "patch_pixels",
    "probe_encoder",
    "read_prepared_split",
    "run_probe",
    "token_features",
]


def read_prepared_split(datalist: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` in [0, 1] and label maps ``(N, H, W)`` of one split of a ``scsam-prepare`` datalist.

    The images are the prepared uint8 slices scaled as ``image_normalization: prepared`` scales them.

    Raises:
        ValueError: the split is empty or unreadable, or its slices differ in size (the message names the file).
    """
    items = read_split(datalist, split)
    if not items:
        raise ValueError(f"datalist '{datalist}': split {split!r} is missing, empty or unreadable.")
    images, labels = [], []
    for item in items:
        image = normalize_slice(read_image_2d(item["image"]), PREPARED_SLICE_WINDOW)
        label = read_image_2d(item["label"])
        if image.shape != label.shape or (images and image.shape != images[0].shape):
            raise ValueError(
                f"datalist '{datalist}', split {split!r}: '{item['image']}' is {image.shape}, its label "
                f"{label.shape}; the probe needs slices and labels of one size."
            )
        images.append(image)
        labels.append(label)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(labels).astype(np.int64))


@torch.no_grad()
def token_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """The encoder's embedding of every image, one row per token: ``(N * g * g, C)`` for a ``(C, g, g)`` grid."""
    rows = []
    for start in range(0, len(images), batch_size):
        emb = encoder(images[start : start + batch_size]).float()
        rows.append(emb.flatten(2).transpose(1, 2).reshape(-1, emb.shape[1]))
    return torch.cat(rows)


def patch_class_fractions(labels: torch.Tensor, num_classes: int, grid: int) -> torch.Tensor:
    """Fraction of each class (background first) in each token's patch: ``(N * grid * grid, num_classes + 1)``.

    Raises:
        ValueError: the label side is not a multiple of ``grid``.
    """
    size = labels.shape[-1]
    if size % grid or labels.shape[-2] != size:
        raise ValueError(f"labels of {tuple(labels.shape[-2:])} do not tile into a {grid} x {grid} token grid.")
    one_hot = F.one_hot(labels.long().clamp(0, num_classes), num_classes + 1).permute(0, 3, 1, 2).float()
    fractions = F.avg_pool2d(one_hot, size // grid)
    return fractions.flatten(2).transpose(1, 2).reshape(-1, num_classes + 1)


def patch_pixels(images: torch.Tensor, grid: int) -> torch.Tensor:
    """Each token's patch of pixels, flattened: ``(N * grid * grid, (H / grid) ** 2)``."""
    patch = images.shape[-1] // grid
    return F.unfold(images.float(), patch, stride=patch).transpose(1, 2).reshape(-1, patch * patch)


def fixed_pattern_share(tokens: torch.Tensor) -> float:
    """Share of the features' variance that each position's mean over the images holds.

    A pattern that is the same in every image (position embeddings carried through an encoder, structure shared
    by neighbouring serial sections) scores near 1; features that vary freely between images near 0.

    Args:
        tokens: features of N images at P positions, ``(N, P, C)``.
    """
    tokens = tokens.double()
    fixed = (tokens.mean(dim=0) - tokens.mean(dim=(0, 1))).pow(2).mean(dim=0).sum()
    return float(fixed / tokens.var(dim=(0, 1), unbiased=False).sum())


def image_dependent_variance(tokens: torch.Tensor) -> float:
    """Variance per channel that changes between images: each position's variance over the images, averaged.

    The absolute scale of what a head can learn from (in the encoder's output units): a fixed pattern adds to a
    channel's variance but not to this. A trained head starts from a fixed initialisation and takes a few steps,
    so it reads a small image-dependent signal less easily than a large one, however linearly informative.

    Args:
        tokens: features of N images at P positions, ``(N, P, C)``.
    """
    tokens = tokens.double()
    return float(tokens.var(dim=0, unbiased=False).mean())


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Ridge regression with an intercept, closed form in float64; returns the fitted linear map.

    ``alpha`` is relative: the penalty is ``alpha`` times the mean diagonal of ``X^T X``, so one value suits
    features of any width and scale.
    """
    x = torch.cat([features.double(), features.new_ones(len(features), 1).double()], dim=1)
    gram = x.T @ x
    gram += alpha * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    weights = torch.linalg.solve(gram, x.T @ targets.double())

    def predict(new: torch.Tensor) -> torch.Tensor:
        return (torch.cat([new.double(), new.new_ones(len(new), 1).double()], dim=1) @ weights).float()

    return predict


def probe_encoder(
    encoder: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    *,
    alpha: float = 1e-3,
) -> dict[str, Any]:
    """Linear probes of one encoder: test per-class Dice of the class-fraction probe and the pixel probe's R^2.

    Args:
        encoder: maps ``(B, 1, H, W)`` images in [0, 1] to ``(B, C, g, g)`` embeddings (a frozen encoder).
        train: training images ``(N, 1, H, W)`` and labels ``(N, H, W)``.
        test: test images and labels.
        num_classes: foreground classes (label values 1..num_classes).
        alpha: relative ridge penalty (:func:`fit_ridge`).

    Returns:
        ``dice`` (per foreground class, NaN where no test image holds it), ``dice_mean``, ``pixel_r2``, ``grid``,
        ``channels``, and the spread of the raw training features' variance: ``first_component_share``,
        ``participation_ratio`` and ``fixed_pattern_share`` (the share held by each position's mean over the
        training images: a pattern that is the same in every image, such as position embeddings carried through)
        and ``image_dependent_variance`` (:func:`image_dependent_variance`, in the features' own units).
    """
    (x_train, y_train), (x_test, y_test) = train, test
    f_train, f_test = token_features(encoder, x_train), token_features(encoder, x_test)
    grid = math.isqrt(len(f_train) // len(x_train))
    # how the raw features' variance is spread: the share of the first principal component, and the participation
    # ratio (sum of eigenvalues)^2 / sum of their squares, an effective number of directions
    eigen = torch.linalg.eigvalsh(torch.cov(f_train.double().T)).clamp_min(0.0)
    per_image = f_train.reshape(len(x_train), grid * grid, -1)  # (images, positions, channels)
    spread = {
        "first_component_share": float(eigen[-1] / eigen.sum()),
        "participation_ratio": float(eigen.sum() ** 2 / (eigen**2).sum()),
        "fixed_pattern_share": fixed_pattern_share(per_image),
        "image_dependent_variance": image_dependent_variance(per_image),
    }
    mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std

    classes = fit_ridge(f_train, patch_class_fractions(y_train, num_classes, grid), alpha)(f_test)
    classes = classes.reshape(len(x_test), grid, grid, num_classes + 1).permute(0, 3, 1, 2)
    classes = F.interpolate(classes, size=tuple(y_test.shape[-2:]), mode="bilinear", align_corners=False)
    predicted = F.one_hot(classes.argmax(1), num_classes + 1).permute(0, 3, 1, 2)
    truth = F.one_hot(y_test.long().clamp(0, num_classes), num_classes + 1).permute(0, 3, 1, 2)
    per_image = compute_dice(predicted, truth, include_background=False, ignore_empty=True)  # (N, classes)
    dice = [float(v) for v in torch.nanmean(per_image, dim=0)]

    pixels = patch_pixels(x_test, grid)
    estimate = fit_ridge(f_train, patch_pixels(x_train, grid), alpha)(f_test)
    r2 = 1.0 - float(((estimate - pixels) ** 2).sum() / ((pixels - pixels.mean(0)) ** 2).sum())
    return {
        "dice": dice,
        "dice_mean": float(np.nanmean(dice)),
        "pixel_r2": r2,
        "grid": grid,
        "channels": int(f_train.shape[1]),
        **spread,
    }


def run_probe(
    datalist: str | Path,
    encoders: Mapping[str, Callable[[], nn.Module]],
    out_dir: str | Path | None = None,
    *,
    class_names: Sequence[str],
    alpha: float = 1e-3,
    test_split: str = "test",
) -> dict[str, Any]:
    """Probe every encoder on a datalist's training and ``test_split`` slices; write ``probe.json`` / ``probe.md``.

    Args:
        datalist: a ``scsam-prepare`` datalist (prepared slices).
        encoders: display name -> a function building the frozen encoder (built one at a time).
        out_dir: folder for ``probe.json`` and ``probe.md`` (written atomically); None to write nothing.
        class_names: names of the label values 1..C.
        alpha: relative ridge penalty.
        test_split: the split scored.
    """
    train = read_prepared_split(datalist, "training")
    test = read_prepared_split(datalist, test_split)
    result: dict[str, Any] = {
        "datalist": str(datalist),
        "test_split": test_split,
        "class_names": list(class_names),
        "alpha": alpha,
        "train_slices": len(train[0]),
        "test_slices": len(test[0]),
        "encoders": {},
    }
    for name, build in encoders.items():
        encoder = build().eval()
        result["encoders"][name] = probe_encoder(encoder, train, test, len(class_names), alpha=alpha)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "probe.json", result)
        atomic_write_text(out / "probe.md", format_probe(result))
    return result


def format_probe(result: Mapping[str, Any]) -> str:
    """The probe's table in Markdown."""
    names = result["class_names"]
    lines = [
        f"# Linear probes of frozen features ({result['train_slices']} training, {result['test_slices']} "
        f"{result['test_split']} slices; ridge alpha {result['alpha']:g})",
        "",
        "| encoder | channels | " + " | ".join(f"dice_{n}" for n in names) + " | dice_mean | pixel_r2 | pc1_share "
        "| participation_ratio | fixed_pattern_share | image_dependent_variance |",
        "|---|---:|" + "---:|" * (len(names) + 6),
    ]
    for enc, row in result["encoders"].items():
        dice = " | ".join("n/a" if math.isnan(v) else f"{v:.3f}" for v in row["dice"])
        lines.append(
            f"| {enc} | {row['channels']} | {dice} | {row['dice_mean']:.3f} | {row['pixel_r2']:.4f} | "
            f"{row['first_component_share']:.3f} | {row['participation_ratio']:.1f} | "
            f"{row.get('fixed_pattern_share', math.nan):.3f} | {row.get('image_dependent_variance', math.nan):.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Probe the pre-trained MAE, its random twins and the random SAM of the small profile (tiny archs)."""
    from scsam_monai.networks.encoders import FrozenMaeEncoder, FrozenSamEncoder

    parser = argparse.ArgumentParser(prog="python -m experiments.feature_probe", description=__doc__)
    parser.add_argument("--datalist", required=True, help="scsam-prepare datalist (prepared slices)")
    parser.add_argument("--mae-checkpoint", required=True, help="the pre-trained MAE encoder (mae_encoder.pth)")
    parser.add_argument("--mae-arch", default="tiny")
    parser.add_argument("--sam-arch", default="tiny")
    parser.add_argument(
        "--extra-mae",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a further MAE encoder file to probe under NAME (repeatable), e.g. the untrained start of "
        "python -m experiments.mae_untrained",
    )
    parser.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random twins")
    parser.add_argument("--alpha", type=float, default=1e-3, help="relative ridge penalty")
    parser.add_argument("--class-names", nargs="+", help="names of label values 1..C (default: the datalist's)")
    parser.add_argument("--out", required=True, help="folder for probe.json and probe.md")
    args = parser.parse_args(argv)
    names = args.class_names
    if not names:  # the datalist's classes, background first: the probe names the foreground ones
        names = (class_names_of(json.loads(Path(args.datalist).read_text())) or [])[1:]
    if not names:
        parser.error("--class-names is needed: the datalist has no 'labels' map")
    encoders: dict[str, Callable[[], nn.Module]] = {
        "MAE (pre-trained)": lambda: FrozenMaeEncoder(arch=args.mae_arch, checkpoint=args.mae_checkpoint)
    }
    for extra in args.extra_mae:
        name, sep, path = extra.partition("=")
        if not sep or not name or not path:
            parser.error(f"--extra-mae {extra!r}: expected NAME=PATH")
        if not Path(path).is_file():
            parser.error(f"--extra-mae {extra!r}: no file {path}")
        encoders[name] = lambda p=path: FrozenMaeEncoder(arch=args.mae_arch, checkpoint=p)
    for seed in args.random_seeds:
        encoders[f"MAE (random, seed {seed})"] = lambda s=seed: FrozenMaeEncoder(
            arch=args.mae_arch, allow_random_weights=True, seed=s
        )
    encoders["SAM (random, seed 0)"] = lambda: FrozenSamEncoder(arch=args.sam_arch, allow_random_weights=True)
    result = run_probe(args.datalist, encoders, args.out, class_names=names, alpha=args.alpha)
    print(format_probe(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
