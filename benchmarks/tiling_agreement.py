"""Do tiles change the segmentation? Two tilings of one large slice, offset by half a tile, compared pixel by pixel.

A trained model segments a large mosaic of the demo generator's synthetic slices (``synthesize_slice(256)``,
one seed per cell) in canvas-sized tiles blended with Gaussian weights
(:func:`~scsam_monai.engines.tiling.segment_tiled`), once from the slice's corner and once from half a tile further
in; the share of the shared pixels with the same label is the agreement (target: at least 0.99). Both tilings see
the same normalised slice.

When the offset is a multiple of the tiling's step (half a tile with the default overlap of half a tile), the second
grid's tiles are the first grid's tiles but those of its first row and column: the pixels differ only near that
edge, and the agreement measures the edge alone (``shared_tiles`` true; ``interior_agreement``, beyond the second
grid's first tile row and column, is then 1 up to rounding). An offset between the steps (``--offset``,
e.g. a quarter tile) cuts every tile differently and measures how much a pixel's label depends on the tile around
it: ScSAM pools its class prompts over the whole tile (the sparse prompt tokens are a learned reduction over all
positions, and the fusion module's channel attention pools the tile), so the two grids cannot agree everywhere.

Run (the demo's model, after ``bash scripts/demo.sh``)::

    python -m benchmarks.tiling_agreement --model outputs/demo/models/model.pt \\
        --mae-checkpoint outputs/demo/models/mae_encoder.pth --size 4096 --out benchmarks/results

It writes ``tiling_agreement.json`` and ``tiling_agreement.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from scsam_monai.atomic import atomic_write_json, atomic_write_text
from scsam_monai.engines.tiling import Tiling, segment_tiled
from scsam_monai.hashing import sha256_file
from scsam_monai.model import build_scsam
from scsam_monai.synthetic import synthesize_slice

__all__ = ["demo_mosaic", "tiling_agreement", "main"]

CLASSES = ["background", "nucleus", "mitochondria", "granules"]


def demo_mosaic(size: int, cell: int = 256) -> np.ndarray:
    """A ``size`` x ``size`` uint8 mosaic of the demo generator's ``cell``-pixel slices (seed = cell index)."""
    if size % cell:
        raise ValueError(f"size must be a multiple of {cell}, got {size}.")
    n = size // cell
    return np.block([[synthesize_slice(cell, seed=n * r + c)[0] for c in range(n)] for r in range(n)])


def tiling_agreement(
    model: torch.nn.Module, size: int, *, overlap: float = 0.5, offset: int | None = None, batch_size: int = 8
) -> dict[str, float | int | bool]:
    """Agreement of two tilings (the second ``offset`` pixels in) of a ``size``-pixel demo mosaic, and what it took.

    Args:
        model: the image-in ScSAM (``fit_to_canvas=False`` segments a tile at its own pixel size).
        size: side of the mosaic (a multiple of 256).
        overlap: tile overlap of both tilings.
        offset: pixels between the two grids along each axis; None: half a tile.
        batch_size: tiles per model call.
    """
    canvas = int(model.canvas_size)
    image = model.preprocessing.normalizer(None)(demo_mosaic(size))  # one normalisation for both tilings
    tiling = Tiling(canvas, overlap, batch_size=batch_size)
    shift = canvas // 2 if offset is None else int(offset)
    if not 0 < shift < size - 2 * canvas:
        raise ValueError(f"offset must be in (0, {size - 2 * canvas}) for a {size}-pixel mosaic, got {shift}.")

    def run(part: np.ndarray) -> np.ndarray:
        labels, _ = segment_tiled(lambda x: model(x, fit_to_canvas=False), part, tiling=tiling, scale=1.0)
        return labels

    start = time.perf_counter()
    whole = run(image)
    shifted = run(image[shift:, shift:])
    seconds = time.perf_counter() - start
    same = whole[shift:, shift:] == shifted
    return {
        "agreement": float(same.mean()),
        # beyond the second grid's first tile row and column: where grids that share their tiles blend the same ones
        "interior_agreement": float(same[canvas:, canvas:].mean()),
        "size": size,
        "tile": canvas,
        "offset": shift,
        "overlap": overlap,
        "step": tiling.step,
        "shared_tiles": shift % tiling.step == 0,
        "foreground_share": float((whole > 0).mean()),
        "classes_found": int(len(np.unique(whole))),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: measure and write ``tiling_agreement.json`` / ``.md`` into ``--out``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiling_agreement", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="trained head weights (models/model.pt) of the tiny profile")
    p.add_argument("--mae-checkpoint", help="the MAE encoder the head was trained with (default: random tiny)")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--offset", type=int, help="pixels between the two grids (default: half a tile)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_scsam(
        class_names=CLASSES,
        sam_arch="tiny",
        sam_allow_random_weights=True,
        mae_arch="tiny",
        mae_checkpoint=args.mae_checkpoint,
        mae_allow_random_weights=args.mae_checkpoint is None,
    )
    model.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    result = tiling_agreement(
        model.eval(), args.size, overlap=args.overlap, offset=args.offset, batch_size=args.batch_size
    )
    result.update(
        model=str(args.model),
        model_sha256=sha256_file(args.model),
        mae_checkpoint=args.mae_checkpoint,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        date=time.strftime("%Y-%m-%d"),
        command="python -m benchmarks.tiling_agreement " + " ".join(argv if argv is not None else _argv()),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "tiling_agreement.json", result)
    atomic_write_text(
        out / "tiling_agreement.md",
        f"# Two tilings, the second {result['offset']} pixels in ({result['date']})\n\n`{result['command']}`\n\n"
        f"A {args.size}² mosaic of the demo generator's slices, tiles of {result['tile']} pixels (overlap "
        f"{args.overlap}, step {result['step']}), the second tiling {result['offset']} pixels in"
        + (" (a multiple of the step: the grids share their inner tiles)" if result["shared_tiles"] else "")
        + f": **{result['agreement']:.4f}** of the "
        f"shared pixels have the same label (target >= 0.99), {result['interior_agreement']:.4f} beyond the second "
        f"grid's first tile row and column; {result['classes_found']} label values, "
        f"{result['foreground_share']:.3f} foreground, {result['seconds']} s for both tilings "
        f"({result['threads']} thread{'s' if result['threads'] != 1 else ''}).\n",
    )
    print(json.dumps(result, indent=1))
    return 0


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    raise SystemExit(main())
