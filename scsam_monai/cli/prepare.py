"""``scsam-prepare``: turn labelled EM volumes into 2D slices, a MONAI datalist and a manifest.

One cell with binary masks (the Drosophila ssTEM sample, split by slice ranges)::

    scsam-prepare --image ../shared/data/drosophila-vnc-sstem/raw \\
      --mask mitochondria=../shared/data/drosophila-vnc-sstem/mitochondria \\
      --mask synapses=../shared/data/drosophila-vnc-sstem/synapses \\
      --mask membranes=../shared/data/drosophila-vnc-sstem/membranes \\
      --train-slices 0:15 --val-slices 16:20 --out data/drosophila

Several cells, the paper's split (the last cell trains, the others validate)::

    scsam-prepare --classes nucleus,mitochondria,granules --middle-slices 350 \\
      --cell c1 --image c1/source.tif --mask nucleus=c1/nucleus.tif --mask mitochondria=c1/mito.tif \\
                --mask granules=c1/granules.tif:nonzero \\
      --cell c2 --image c2/source.tif --mask nucleus=c2/nucleus.tif ... --out data/cells

or the same cells from a YAML spec (``--spec cells.yaml``, see :func:`scsam_monai.preparation.load_cells_spec`).
Cell options (``--cell``, ``--image``, ``--image-key``, ``--mask``, ``--mask-key``, ``--labels``,
``--labels-key``) belong to the cell being described: ``--cell NAME`` or a further ``--image`` starts the next.
On any problem it prints one error naming the file and exits with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scsam_monai.io.readers import DataPreparationError
from scsam_monai.preparation import (
    SPLITS,
    CellSource,
    MaskSource,
    SplitSpec,
    load_cells_spec,
    parse_label_values,
    parse_ranges,
    prepare_dataset,
)

__all__ = ["build_parser", "main", "parse_mask"]

_CELL_FIELDS = ("cell", "image", "image_key", "mask", "mask_key", "labels", "labels_key")


def parse_mask(text: str) -> MaskSource:
    """Parse ``NAME=PATH[:THRESHOLD]``; THRESHOLD is a number, ``auto`` or ``nonzero``."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest:
        raise DataPreparationError(f"--mask expects NAME=PATH[:THRESHOLD], got '{text}'.")
    path, threshold = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        if tail in ("auto", "nonzero"):
            path, threshold = head, tail
        else:
            try:
                path, threshold = head, float(tail)
            except ValueError:
                pass
    return MaskSource(name.strip(), path, None, threshold)


def _parse_crop(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    ranges = parse_ranges(text)
    if len(ranges) != 2:
        raise DataPreparationError(f"--crop expects Y0:Y1,X0:X1, got '{text}'.")
    return ranges[0], ranges[1]


def _parse_pair(text: str, option: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError as err:
        raise DataPreparationError(f"{option} expects LOW,HIGH, got '{text}'.") from err
    return low, high


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


class _CellOption(argparse.Action):
    """Collects cell options in order: ``--cell`` or a second ``--image`` starts a new cell."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        cells = namespace.cells if namespace.cells is not None else []
        namespace.cells = cells
        field = self.dest[len("cell_") :]
        if field == "cell" or not cells or (field == "image" and "image" in cells[-1]):
            cells.append({"mask": [], "mask_key": []})
        if field in ("mask", "mask_key"):
            cells[-1][field].append(values)
        else:
            cells[-1][field] = values


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``scsam-prepare``."""
    parser = argparse.ArgumentParser(
        prog="scsam-prepare",
        description=(
            "Turn labelled EM volumes (cells) into 2D TIFF slices, a MONAI datalist.json and a manifest.json. "
            "Images are normalised per volume (robust percentiles) to uint8; labels are 0 background and 1..C the "
            "--classes in order. Splits never share a slice. Reads TIFF/OME-TIFF, PNG, folders or globs of "
            "per-slice files, HDF5, N5, (OME-)Zarr, NIfTI, MHA and NRRD."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "masks: NAME=PATH[:THRESHOLD]; THRESHOLD is a number (foreground = value >= it), 'nonzero' or 'auto' "
            "(default: a mask with exactly two distinct values takes the larger as foreground; otherwise "
            "foreground = value >= half the dtype's maximum, e.g. >= 128 for 8-bit soft-edged masks)."
        ),
    )
    parser.set_defaults(cells=None)
    cell = parser.add_argument_group("a cell (repeat the group for several cells)")
    cell.add_argument("--cell", dest="cell_cell", action=_CellOption, metavar="NAME", help="start a cell named NAME")
    cell.add_argument(
        "--image",
        dest="cell_image",
        action=_CellOption,
        metavar="PATH",
        help="EM volume: file, folder of slices, glob, HDF5/N5/Zarr container or s3:// URL",
    )
    cell.add_argument(
        "--image-key",
        dest="cell_image_key",
        action=_CellOption,
        metavar="KEY",
        help="dataset inside HDF5/N5/Zarr (e.g. raw, em/fibsem-uint16/s0)",
    )
    cell.add_argument(
        "--mask",
        dest="cell_mask",
        action=_CellOption,
        metavar="NAME=PATH[:THRESHOLD]",
        help="binary mask of one class (repeat per class)",
    )
    cell.add_argument(
        "--mask-key",
        dest="cell_mask_key",
        action=_CellOption,
        metavar="NAME=KEY",
        help="dataset key of mask NAME inside HDF5/N5/Zarr",
    )
    cell.add_argument(
        "--labels",
        dest="cell_labels",
        action=_CellOption,
        metavar="PATH",
        help="one integer label map instead of masks",
    )
    cell.add_argument(
        "--labels-key", dest="cell_labels_key", action=_CellOption, metavar="KEY", help="dataset key of the label map"
    )
    parser.add_argument("--spec", metavar="FILE", help="YAML/JSON file listing cells (added before CLI cells)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--classes", metavar="A,B,C", help="class names = label values 1..C (default: mask names)")
    parser.add_argument(
        "--label-values",
        metavar="NAME=V[+V],...",
        help="label-map values of each class, e.g. mitochondria=191,background=0+255",
    )
    parser.add_argument(
        "--unmapped",
        choices=("error", "background"),
        default="error",
        help="label values outside the class list: stop (default) or make them background",
    )
    parser.add_argument(
        "--overlap",
        choices=("first", "last", "error"),
        default="first",
        help="where masks overlap: the class listed first wins (default), last wins, or stop",
    )
    parser.add_argument("--axis", choices=("z", "y", "x"), default="z", help="slicing axis (default z)")
    parser.add_argument("--middle-slices", type=int, metavar="N", help="keep the N middle slices (paper: 350)")
    parser.add_argument("--crop", metavar="Y0:Y1,X0:X1", help="in-plane crop of every slice")
    parser.add_argument("--downscale", type=int, default=1, metavar="F", help="in-plane downscaling factor")
    parser.add_argument(
        "--percentiles", default="0.5,99.5", metavar="LOW,HIGH", help="per-volume intensity window (default 0.5,99.5)"
    )
    parser.add_argument(
        "--save-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="image slices as uint8 0..255 (default) or float32 0..1",
    )
    split = parser.add_argument_group("split (default: the paper's, the last cell trains, the others validate)")
    split.add_argument("--train-cells", metavar="A,B", help="cells for training")
    split.add_argument("--val-cells", metavar="C", help="cells for validation")
    split.add_argument("--test-cells", metavar="D", help="cells held out for testing")
    split.add_argument("--folds", type=int, metavar="K", help="k-fold by cell (cells go round-robin into K folds)")
    split.add_argument("--fold", type=int, default=0, metavar="I", help="fold validated in datalist.json")
    split.add_argument("--train-slices", metavar="0:8,..", help="slice-index ranges for training (every cell)")
    split.add_argument("--val-slices", metavar="10:13,..", help="slice-index ranges for validation")
    split.add_argument("--test-slices", metavar="16:20,..", help="slice-index ranges for testing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _default_names(raw: list[dict]) -> list[str]:
    """Cell names: ``--cell`` or the image's file/folder name; clashes take the parent folder as a prefix."""
    from pathlib import PurePath

    def stem(entry: dict) -> PurePath:
        return PurePath(str(entry.get("image", "cell")).rstrip("/"))

    first = [e.get("cell") or stem(e).name.split(".")[0] for e in raw]
    names = [
        f"{stem(e).parent.name}_{name}" if not e.get("cell") and first.count(name) > 1 else name
        for name, e in zip(first, raw, strict=True)
    ]
    return [f"{name}_{n}" if names.count(name) > 1 else name for n, name in enumerate(names)]


def _cli_cells(raw: list[dict], label_values: dict | None) -> list[CellSource]:
    cells = []
    for name, entry in zip(_default_names(raw), raw, strict=True):
        if "image" not in entry:
            raise DataPreparationError(f"cell '{name}' has no --image.")
        masks = [parse_mask(m) for m in entry["mask"]]
        for spec in entry["mask_key"]:
            mask_name, sep, key = spec.partition("=")
            match = [m for m in masks if m.name == mask_name.strip()]
            if not sep or not match:
                raise DataPreparationError(f"--mask-key expects NAME=KEY for a --mask of cell '{name}', got '{spec}'.")
            match[0].key = key
        labels = entry.get("labels")
        cells.append(
            CellSource(
                name,
                entry["image"],
                entry.get("image_key"),
                masks,
                labels,
                entry.get("labels_key"),
                label_values if labels else None,
            )
        )
    return cells


def main(argv: list[str] | None = None) -> int:
    """Run ``scsam-prepare``.

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status: 0 on success, 2 when the inputs or options are wrong (nothing is written).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        label_values = parse_label_values(args.label_values) if args.label_values else None
        cells, classes = [], _names(args.classes)
        if args.spec:
            spec_cells, spec_options = load_cells_spec(args.spec)
            for c in spec_cells:
                if c.labels is not None and c.label_values is None:
                    c.label_values = label_values or spec_options["label_values"]
            cells += spec_cells
            classes = classes or spec_options["classes"]
        cells += _cli_cells(args.cells or [], label_values)
        split = SplitSpec(
            train_cells=_names(args.train_cells),
            val_cells=_names(args.val_cells),
            test_cells=_names(args.test_cells),
            folds=args.folds,
            fold=args.fold,
            train_slices=parse_ranges(args.train_slices) if args.train_slices else None,
            val_slices=parse_ranges(args.val_slices) if args.val_slices else None,
            test_slices=parse_ranges(args.test_slices) if args.test_slices else None,
        )
        summary = prepare_dataset(
            cells,
            args.out,
            classes=classes,
            axis=args.axis,
            middle_slices=args.middle_slices,
            crop=_parse_crop(args.crop) if args.crop else None,
            downscale=args.downscale,
            overlap=args.overlap,
            unmapped=args.unmapped,
            percentiles=_parse_pair(args.percentiles, "--percentiles"),
            save_dtype=args.save_dtype,
            split=split,
            progress=not args.quiet,
            command=["scsam-prepare", *argv],
        )
    except DataPreparationError as error:
        print(f"scsam-prepare: error: {error}", file=sys.stderr)
        print("scsam-prepare: nothing was written.", file=sys.stderr)
        return 2
    counts = summary["num_slices"]
    print(f"scsam-prepare: {sum(counts.values())} slices: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS))
    for s in SPLITS:
        if counts[s]:
            pixels = summary["pixel_counts"][s]
            print(f"  {s} pixels: " + ", ".join(f"{k} {v}" for k, v in pixels.items()))
    for warning in summary["warnings"]:
        print(f"scsam-prepare: warning: {warning}", file=sys.stderr)
    print(summary["datalist"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
