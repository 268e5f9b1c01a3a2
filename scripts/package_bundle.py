#!/usr/bin/env python
"""Write the bundle as a MONAI Model Zoo zip: ``<name>/configs``, ``models`` (trained weights, optional),
``docs``, ``LICENSE`` and ``large_files.yml``.

Run: python scripts/package_bundle.py --output dist/scsam_em_segmentation.zip [--weights bundle/models/model.pt]

Unzipped, the folder is a bundle that ``monai.bundle`` runs and loads (``ConfigWorkflow``, ``verify_net_in_out``,
``ckpt_export``) with ``--bundle_root`` pointing at it. Large files (SAM checkpoints, listed in large_files.yml)
and the training outputs in ``bundle/eval`` are never packed; only the weights named with ``--weights`` are.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".conf")
REQUIRED = ("configs/metadata.json", "configs/train.yaml", "configs/inference.yaml", "docs/README.md", "LICENSE")


def bundle_files(bundle_dir: Path, weights: list[Path]) -> dict[str, Path]:
    """Archive name (relative to the bundle folder) -> file to pack."""
    files: dict[str, Path] = {}
    for path in sorted((bundle_dir / "configs").iterdir()):
        if path.is_file() and path.suffix in CONFIG_SUFFIXES:
            files[f"configs/{path.name}"] = path
    for path in sorted((bundle_dir / "docs").rglob("*")):
        if path.is_file():
            files[f"docs/{path.relative_to(bundle_dir / 'docs').as_posix()}"] = path
    for name in ("LICENSE", "large_files.yml", "models/README.md"):
        if (bundle_dir / name).is_file():
            files[name] = bundle_dir / name
    for path in weights:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found.")
        files[f"models/{path.name}"] = path
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise FileNotFoundError(f"{bundle_dir}: the bundle lacks {', '.join(missing)}.")
    return files


def package(bundle_dir: Path, output: Path, name: str | None = None, weights: list[Path] = ()) -> Path:
    """Write the zip; its top folder is ``name`` (default: the zip's stem). Returns ``output``."""
    bundle_dir, output = Path(bundle_dir), Path(output)
    json.loads((bundle_dir / "configs" / "metadata.json").read_text())  # fail early on a broken metadata file
    name = name or output.stem
    files = bundle_files(bundle_dir, [Path(w) for w in weights])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/models/", "")
        for arcname, path in files.items():
            archive.write(path, f"{name}/{arcname}")
    tmp.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle_dir", type=Path, default=REPO_ROOT / "bundle", help="bundle folder to pack")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "dist" / "scsam_em_segmentation.zip")
    parser.add_argument("--name", default=None, help="top folder inside the zip (default: the zip's stem)")
    parser.add_argument("--weights", type=Path, nargs="*", default=[], help="files to pack into models/")
    args = parser.parse_args(argv)
    try:
        path = package(args.bundle_dir, args.output, args.name, args.weights)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
