"""Export an untrained MAE encoder (step 0): the control that isolates what pre-training adds.

``python -m experiments.mae_untrained --arch tiny --seed 0 --out outputs/mae_untrained_seed0.pt``

The random twin of the experiments (``MAE* (random MAE)``, ``FrozenMaeEncoder(allow_random_weights=True)``) is timm's
randomly initialised ViT, whose position embedding is timm's small random initialisation. The pre-trained encoder
starts from a different point: :class:`~scsam_monai.mae.MaskedAutoencoder` replaces that embedding with MAE's fixed
sin-cos position code before the first step and never trains it. An MAE* row on this file (``--override
mae_checkpoint=<it>``) therefore differs from the pre-trained MAE* row by the pre-training (and the random draw of
the start), and, with the twin's seed, from the random twin by the position code alone
(``experiments/results/real_em.md``). The file has the format of the pre-training's export
(``MaskedAutoencoder.save_encoder``), with ``steps: 0`` in its record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from scsam_monai.mae.model import MaskedAutoencoder

__all__ = ["untrained_mae", "export_untrained_encoder", "main"]


def untrained_mae(arch: str = "tiny", seed: int = 0, *, depth: int | None = None) -> MaskedAutoencoder:
    """The MAE of ``arch`` before any training step, built by the class pre-training builds, from ``seed``.

    A pre-training run draws its own start from its RNG state (the bundle seeds it with ``set_determinism``), so this
    is an untrained MAE of the same construction, not necessarily the very weights a given run started from.

    Args:
        arch: key of ``MAE_ARCHITECTURES``.
        seed: torch seed set just before building (the global RNG is restored afterwards).
        depth: encoder blocks; None for the arch's.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return MaskedAutoencoder(arch=arch, depth=depth)


def export_untrained_encoder(path: str | Path, arch: str = "tiny", seed: int = 0, *, depth: int | None = None) -> Path:
    """Write the step-0 encoder of :func:`untrained_mae` atomically for ``FrozenMaeEncoder(checkpoint=path)``.

    Returns:
        The path written.
    """
    mae = untrained_mae(arch, seed, depth=depth)
    return mae.save_encoder(path, steps=0, seed=int(seed), note="untrained: the MAE at its initialisation (step 0)")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--arch``, ``--seed``, ``--depth``, ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", help="MAE architecture (default tiny)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation (default 0)")
    parser.add_argument("--depth", type=int, help="encoder blocks (default: the arch's)")
    parser.add_argument("--out", required=True, help="encoder file to write (mae_encoder.pth format)")
    args = parser.parse_args(argv)
    print(export_untrained_encoder(args.out, args.arch, args.seed, depth=args.depth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
