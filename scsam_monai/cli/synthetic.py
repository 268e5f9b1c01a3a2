"""``scsam-synthetic``: write the seeded synthetic EM data set and print the path of its datalist.

Example::

    scsam-synthetic --out data/synthetic --num-train 24 --num-val 6 --num-test 4 --size 256 --seed 0
    python -m scsam_monai.cli.synthetic --out data/synthetic
"""

from __future__ import annotations

import argparse

from scsam_monai.synthetic import write_synthetic_dataset

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``scsam-synthetic``."""
    parser = argparse.ArgumentParser(
        prog="scsam-synthetic",
        description=(
            "Write seeded synthetic FIB-SEM-like beta-cell slices (uint8 TIFF images and labels: 0 background, "
            "1 nucleus, 2 mitochondria, 3 granules) and a MONAI Decathlon-style datalist.json. Synthetic data: "
            "results on it are no evidence of quality on real EM. Re-running with the same arguments is a no-op."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--num-train", type=int, default=24, help="number of training slices (default 24)")
    parser.add_argument("--num-val", type=int, default=6, help="number of validation slices (default 6)")
    parser.add_argument("--num-test", type=int, default=4, help="number of test slices (default 4)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed, non-negative (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``scsam-synthetic``.

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status, 0 on success.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        datalist = write_synthetic_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            size=args.size,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    print(datalist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
