"""Command line of ``scripts/run_experiments.py``."""

from __future__ import annotations

import argparse
import ast
import logging
import sys
from pathlib import Path

from experiments.registry import GROUPS, METHODS
from experiments.runner import PROFILES, run_experiments

__all__ = ["build_parser", "main"]

DEFAULT_DATALIST = "data/synthetic/datalist.json"


#: YAML's words for booleans and null (the configs' spelling) and Python's: ``amp=false`` must switch amp off. A string
#: "false" would reach the trainer as a true value.
_WORDS = {"true": True, "false": False, "null": None, "none": None, "~": None}


def _override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--override``: the value as a Python literal, a YAML boolean or null word, else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--override takes KEY=VALUE, got {text!r}.")
    key, value = text.split("=", 1)
    if value.strip().lower() in _WORDS:
        return key, _WORDS[value.strip().lower()]
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``run_experiments``."""
    parser = argparse.ArgumentParser(
        prog="run_experiments",
        description=(
            "Train and score ScSAM, its variants and ablations, supervised MONAI networks and zero-shot SAM on one "
            "datalist (same split, preprocessing and augmentation); write results.csv, results.md, "
            "learning_curves.png, qualitative.png and runs/<method>/ (config, seed, rerun command) into --out."
        ),
    )
    parser.add_argument(
        "--datalist",
        default=DEFAULT_DATALIST,
        help=f"Decathlon datalist with training/validation/test splits (default {DEFAULT_DATALIST}, the embedded "
        "synthetic set, written first when missing)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="tiny",
        help="tiny (CPU minutes, a smoke test), small (2 CPU cores, <= ~30 min on 20 slices) or full (GPU)",
    )
    parser.add_argument("--out", default="outputs/experiments", help="output folder (default outputs/experiments)")
    parser.add_argument(
        "--methods", help=f"comma-separated methods (default all): {', '.join(m.name for m in METHODS)}"
    )
    parser.add_argument("--groups", help=f"comma-separated groups whose methods to run: {', '.join(GROUPS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of every row (default 0)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--cache-dir", help="embedding cache (default: embedding_cache beside the datalist)")
    parser.add_argument("--no-cross-dataset", action="store_true", help="skip the cross-dataset rows")
    parser.add_argument(
        "--budget-per-slice",
        type=int,
        help="training samples per training slice for every trainable row (one sample = one augmented view of one "
        "slice; default: the profile's)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        help="validations without a gain of validation mean Dice before a row stops (0: never; default: the profile's)",
    )
    parser.add_argument(
        "--override",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="bundle override for every row, e.g. sam_checkpoint=bundle/models/sam_vit_b_01ec64.pth or "
        "\"class_names=['background','mitochondria']\" (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the experiments; exit status 0 when every row ran, 1 when some failed, 2 on a usage error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    datalist = Path(args.datalist)
    if not datalist.is_file():
        if args.datalist != DEFAULT_DATALIST:
            print(f"run_experiments: error: {datalist} not found.", file=sys.stderr)
            return 2
        from scsam_monai.synthetic import write_synthetic_dataset

        datalist = write_synthetic_dataset(datalist.parent)
    try:
        paths = run_experiments(
            datalist=datalist,
            out=args.out,
            profile=args.profile,
            methods=[m for m in (args.methods or "").split(",") if m] or None,
            groups=[g for g in (args.groups or "").split(",") if g] or None,
            seed=args.seed,
            overrides=dict(args.override),
            cache_dir=args.cache_dir,
            cross_dataset=not args.no_cross_dataset,
            device=args.device,
            budget_per_slice=args.budget_per_slice,
            patience=args.patience,
        )
    except ValueError as err:
        print(f"run_experiments: error: {err}", file=sys.stderr)
        return 2
    import json

    failed = [r["name"] for r in json.loads(paths["results.json"].read_text())["records"] if "error" in r]
    for path in paths.values():
        print(path)
    if failed:
        print(f"run_experiments: failed rows: {', '.join(failed)} (see results.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
