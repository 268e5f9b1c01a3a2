#!/usr/bin/env python
"""Write the bundle as a MONAI Model Zoo submission: a self-contained folder (and optionally a zip).

Run: python scripts/package_bundle.py --output dist [--zip] [--weights bundle/models/model.pt]

The folder ``<output>/scsam_em_organelle_segmentation/`` holds ``configs/``, ``docs/``, ``LICENSE``,
``large_files.yml``, ``models/README.md`` and the ``scsam_monai`` package itself at the bundle's root: the Model
Zoo's CI and MONAI Label's bundle tasks put the bundle folder on ``sys.path``, so every ``scsam_monai.`` target
of the configs resolves inside the bundle with only the packages ``metadata.json`` declares installed. There is
one set of configs (the bundle's own). Large files (SAM checkpoints, the MAE encoder) and training outputs are
never packed; ``models/model.pt`` only when ``--weights`` names trained weights, which must record the
``image_normalization`` they were trained with (every head saved by this version's training does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "scsam_em_organelle_segmentation"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".conf")
REQUIRED = ("configs/metadata.json", "configs/inference.yaml", "configs/train.yaml", "docs/README.md", "LICENSE")
PACKAGE_SUFFIXES = (".py",)
LEFT_OUT = ("label", "bundle_command.py")
"""Parts of scsam_monai the Model Zoo bundle leaves out, both for running from the repository: the MONAI Label app's
tasks (they need monailabel, which the Zoo does not install; MONAI Label serves the bundle with its stock tasks) and
the command line of the repository's bundle folder."""


def bundle_files(bundle_dir: Path, package_dir: Path, weights: Path | None = None) -> dict[str, Path]:
    """Name inside the bundle folder -> file to copy.

    Raises:
        FileNotFoundError: a required file, the package or the weights are missing.
    """
    files: dict[str, Path] = {}
    for path in sorted((bundle_dir / "configs").rglob("*")):
        if path.is_file() and path.suffix in CONFIG_SUFFIXES:
            files[f"configs/{path.relative_to(bundle_dir / 'configs').as_posix()}"] = path
    for path in sorted((bundle_dir / "docs").rglob("*")):
        if path.is_file():
            files[f"docs/{path.relative_to(bundle_dir / 'docs').as_posix()}"] = path
    for name in ("LICENSE", "large_files.yml", "models/README.md"):
        if (bundle_dir / name).is_file():
            files[name] = bundle_dir / name
    if not (package_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"{package_dir}: not the scsam_monai package (no __init__.py).")
    for path in sorted(package_dir.rglob("*")):
        inside = path.relative_to(package_dir).parts
        if (
            path.is_file()
            and path.suffix in PACKAGE_SUFFIXES
            and "__pycache__" not in inside
            and inside[0] not in LEFT_OUT
        ):
            files[f"scsam_monai/{path.relative_to(package_dir).as_posix()}"] = path
    if weights is not None:
        check_weights(weights)
        files["models/model.pt"] = weights
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise FileNotFoundError(f"{bundle_dir}: the bundle lacks {', '.join(missing)}.")
    return files


REPOSITORY_BUNDLE_ROOT = "\nbundle_root: bundle\n"
"""How the repository's configs name the bundle folder: relative to the repository root, where they run."""


def packaged_config(text: str) -> str:
    """A config as the packaged bundle holds it: ``bundle_root: .``, as every Model Zoo bundle runs from its folder."""
    return text.replace(REPOSITORY_BUNDLE_ROOT, "\nbundle_root: .\n")


def check_weights(path: Path) -> None:
    """Refuse weights that are not a trained head recording its ``image_normalization``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, not a state dict, or no ``image_normalization`` recorded.
    """
    import torch

    from scsam_monai.data.preprocessing import PREPROCESSING_KEY, ImagePreprocessing

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure becomes one message
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({err}).") from err
    if not isinstance(state, dict) or not any(str(k).startswith("mask_decoder.") for k in state):
        raise ValueError(f"{path}: not a trained ScSAM head's state dict (models/model.pt as training writes it).")
    if ImagePreprocessing.recorded(state) is None:
        raise ValueError(
            f"{path}: records no {PREPROCESSING_KEY}; weights saved before it was recorded cannot be packaged "
            "(the Model Zoo user could not know how to normalise images). Train again with this version."
        )


def package(
    bundle_dir: Path,
    output: Path,
    *,
    name: str = BUNDLE_NAME,
    weights: Path | None = None,
    package_dir: Path | None = None,
    make_zip: bool = False,
) -> Path:
    """Write ``output/name/`` (replacing an older one) and, with ``make_zip``, ``output/name.zip``.

    Returns:
        The bundle folder, or the zip when ``make_zip``.
    """
    bundle_dir, output = Path(bundle_dir), Path(output)
    json.loads((bundle_dir / "configs" / "metadata.json").read_text(encoding="utf-8"))  # fail early if broken
    files = bundle_files(bundle_dir, Path(package_dir or REPO_ROOT / "scsam_monai"), weights)
    target = output / name
    partial = output / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for arcname, path in files.items():
        (partial / arcname).parent.mkdir(parents=True, exist_ok=True)
        if arcname.startswith("configs/") and path.suffix == ".yaml":
            (partial / arcname).write_text(packaged_config(path.read_text(encoding="utf-8")), encoding="utf-8")
        else:
            shutil.copyfile(path, partial / arcname)
    (partial / "models").mkdir(exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    if not make_zip:
        return target
    archive_path = output / f"{name}.zip"
    tmp = archive_path.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/models/", "")
        for arcname in files:
            archive.write(target / arcname, f"{name}/{arcname}")
    tmp.replace(archive_path)
    return archive_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle_dir", type=Path, default=REPO_ROOT / "bundle", help="bundle folder to pack")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "dist", help="folder to write the bundle into")
    parser.add_argument("--name", default=BUNDLE_NAME, help=f"bundle folder name (default {BUNDLE_NAME})")
    parser.add_argument("--weights", type=Path, default=None, help="trained models/model.pt to include")
    parser.add_argument("--zip", action="store_true", help="also write <output>/<name>.zip")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        path = package(args.bundle_dir, args.output, name=args.name, weights=args.weights, make_zip=args.zip)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
