"""BetaSeg: where the data live, how to download them, and cell specs for ``scsam-prepare``.

BetaSeg (https://betaseg.github.io/) is the FIB-SEM data set of Müller et al., "3D FIB-SEM reconstruction of
microtubule-organelle interaction in whole primary mouse beta cells", J Cell Biol 220(2):e202010039 (2021),
doi:10.1083/jcb.202010039: whole mouse islet beta cells from high- and low-glucose conditions, each with
separate organelle segmentations. The analysed cells are distributed as one archive on the MPI-CBG cloud
(:data:`ARCHIVE_URL`; the same link that torch-em's BetaSeg loader and the MAESTER README use, with the
SHA-256 torch-em checks, :data:`ARCHIVE_SHA256`). Unpacked, every cell is a folder ``<cell>/`` (for example
``high_c1`` ... ``high_c4`` for high glucose; low-glucose cells start with ``low``) holding:

- ``<cell>_source.tif``: the FIB-SEM volume;
- ``<cell>_nucleus_mask.tif``, ``<cell>_mitochondria_mask.tif``, ``<cell>_granules.tif``: the classes ScSAM uses;
- ``<cell>_golgi_corrected.tif``, ``<cell>_centrioles.tif``, ``<cell>_microtubules.tif``,
  ``<cell>_membrane_full_mask.tif``: further structures (the membrane mask is the filled cell).

Masks may be binary or instance-labelled, so the specs written here use ``threshold: nonzero``.

OpenOrganelle (Janelia COSEM) hosts raw FIB-SEM of isolated mouse islets from the same collaboration, without
BetaSeg's per-cell masks, e.g. ``jrc_mus-pancreas-1`` (high glucose, 4 x 4 x 3.4 nm) as an N5 pyramid at
``s3://janelia-cosem-datasets/jrc_mus-pancreas-1/jrc_mus-pancreas-1.n5`` (array ``em/fibsem-uint16/s0``), and
``jrc_mus-pancreas-3`` (low glucose, Janelia figshare article 19196585). ``scsam-prepare`` reads such
volumes lazily (``--image s3://... --image-key em/fibsem-uint16/s0``), given labels for them.

Downloading needs network access to the MPI-CBG cloud. Offline, :func:`download_betaseg` stops at once with a
message saying what to fetch elsewhere, and writes nothing; ``--archive PATH`` then installs a copy of the
archive fetched on another machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scsam_monai.hashing import sha256_file
from scsam_monai.io.readers import DataPreparationError, natural_key

__all__ = [
    "ARCHIVE_URL",
    "ARCHIVE_SHA256",
    "PROJECT_PAGE",
    "MASK_FILES",
    "BetaSegUnavailable",
    "describe",
    "download_betaseg",
    "find_betaseg_cells",
    "write_cell_specs",
    "main",
]

PROJECT_PAGE = "https://betaseg.github.io/"
ARCHIVE_URL = "https://cloud.mpi-cbg.de/index.php/s/UJopHTRuh6f4wR8/download"
ARCHIVE_SHA256 = "4872eec0211721dc224acee319c27c4f51c190adc36004e3d5bb60dfcd67eb7b"
MASK_FILES = {
    "nucleus": "_nucleus_mask.tif",
    "mitochondria": "_mitochondria_mask.tif",
    "granules": "_granules.tif",
    "golgi": "_golgi_corrected.tif",
    "centrioles": "_centrioles.tif",
    "microtubules": "_microtubules.tif",
    "membrane": "_membrane_full_mask.tif",
}
"""Class name -> file-name suffix of its mask in a BetaSeg cell folder."""
PAPER_CLASSES = ("nucleus", "mitochondria", "granules")


class BetaSegUnavailable(DataPreparationError):
    """The archive cannot be reached or does not match its checksum."""


def describe() -> str:
    """Where BetaSeg lives and what the download fetches (printed by ``--info``)."""
    masks = ", ".join(f"<cell>{s}" for s in MASK_FILES.values())
    return (
        f"BetaSeg: {PROJECT_PAGE}\n"
        "  Müller et al., J Cell Biol 220(2):e202010039 (2021), doi:10.1083/jcb.202010039\n"
        f"  archive: {ARCHIVE_URL}\n  sha256:  {ARCHIVE_SHA256}\n"
        "  content: one folder per beta cell (high_c1..high_c4: high glucose; low_*: low glucose) with\n"
        f"           <cell>_source.tif (FIB-SEM) and masks {masks}\n"
        "OpenOrganelle raw islet FIB-SEM (no per-cell masks):\n"
        "  jrc_mus-pancreas-1 (high glucose, doi:10.25378/janelia.13114499),\n"
        "    s3://janelia-cosem-datasets/jrc_mus-pancreas-1/jrc_mus-pancreas-1.n5, array em/fibsem-uint16/s0\n"
        "  jrc_mus-pancreas-3 (low glucose, Janelia figshare article 19196585)"
    )


def _offline_message(url: str, reason: object) -> str:
    return (
        f"{url}: cannot be reached ({reason}). This machine seems to be offline or the share has moved; nothing "
        f"was written. Fetch the archive on a machine with network access (browser or `curl -L -o betaseg.zip "
        f"'{url}'`; SHA-256 {ARCHIVE_SHA256}; see {PROJECT_PAGE}) and install it here with --archive betaseg.zip."
    )


def _fetch(url: str, target: Path, timeout: float, urlopen: Callable, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        response = urlopen(urllib.request.Request(url), timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise BetaSegUnavailable(_offline_message(url, getattr(err, "reason", err))) from err
    total = int(response.headers.get("Content-Length") or 0) if getattr(response, "headers", None) else 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        response,
        open(target, "wb") as out,
        tqdm(total=total or None, unit="B", unit_scale=True, desc="BetaSeg", disable=not progress) as bar,
    ):
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)
            bar.update(len(block))


def _extract(archive: Path, out_dir: Path) -> None:
    """Unpack ``archive`` into ``out_dir``, refusing members that would land outside it."""
    root = out_dir.resolve()
    try:
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise BetaSegUnavailable(f"{archive}: member '{member}' would be written outside {out_dir}.")
            handle.extractall(out_dir)
    except zipfile.BadZipFile as err:
        raise BetaSegUnavailable(f"{archive}: is not a zip archive ({err}).") from err


def download_betaseg(
    out_dir: str | Path,
    *,
    archive: str | Path | None = None,
    url: str = ARCHIVE_URL,
    sha256: str | None = ARCHIVE_SHA256,
    classes: Sequence[str] = PAPER_CLASSES,
    timeout: float = 20.0,
    keep_archive: bool = False,
    progress: bool = True,
    urlopen: Callable[..., Any] | None = None,
) -> list[Path]:
    """Download (or install a local copy of) the BetaSeg archive, unpack it and write cell specs.

    The network is probed before anything is written: offline, it raises at once and leaves no file.

    Args:
        out_dir: folder to unpack into (created).
        archive: a local copy of the archive to install instead of downloading.
        url: the archive's URL.
        sha256: expected SHA-256 of the archive (None skips the check).
        classes: classes of the written specs.
        timeout: seconds to wait for the server.
        keep_archive: keep the downloaded zip in ``out_dir``.
        progress: show a progress bar.
        urlopen: the URL opener (``urllib.request.urlopen``; replaceable in tests).

    Returns:
        The spec files written (see :func:`write_cell_specs`).
    """
    out_dir = Path(out_dir)
    urlopen = urlopen or urllib.request.urlopen
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise BetaSegUnavailable(f"{archive}: file not found.")
    else:
        try:  # probe before writing anything
            urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise BetaSegUnavailable(_offline_message(url, getattr(err, "reason", err))) from err
    created = not out_dir.exists()
    part = out_dir / ".betaseg.zip.part"
    try:
        if archive is None:
            _fetch(url, part, timeout, urlopen, progress)
            archive = part
        if sha256:
            found = sha256_file(archive)
            if found != sha256:
                raise BetaSegUnavailable(f"{archive}: SHA-256 {found} differs from the expected {sha256}.")
        out_dir.mkdir(parents=True, exist_ok=True)
        _extract(archive, out_dir)
        if keep_archive and archive == part:
            os.replace(part, out_dir / "betaseg.zip")
        return write_cell_specs(out_dir, classes=classes)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        part.unlink(missing_ok=True)


def find_betaseg_cells(root: str | Path) -> list[dict[str, Any]]:
    """Cells under ``root``: every ``<cell>_source.tif`` with the masks beside it, sorted naturally.

    Returns:
        Dicts with ``name``, ``condition`` (``high glucose``, ``low glucose`` or ``unknown``), ``image`` and
        ``masks`` (class -> path, for the masks that exist).
    """
    cells = []
    for source in sorted(Path(root).rglob("*_source.tif"), key=natural_key):
        name = source.name[: -len("_source.tif")]
        masks = {c: source.parent / f"{name}{s}" for c, s in MASK_FILES.items()}
        condition = (
            "high glucose" if name.startswith("high") else "low glucose" if name.startswith("low") else "unknown"
        )
        cells.append(
            {
                "name": name,
                "condition": condition,
                "image": source,
                "masks": {c: p for c, p in masks.items() if p.is_file()},
            }
        )
    return cells


def write_cell_specs(root: str | Path, *, classes: Sequence[str] = PAPER_CLASSES) -> list[Path]:
    """Write ``betaseg_all.yaml`` and, per glucose condition, ``betaseg_high.yaml`` / ``betaseg_low.yaml``.

    Each lists its cells in natural order (so the paper's split trains on the last one) with the masks of
    ``classes`` (``threshold: nonzero``). Cells missing one of those masks are left out with a warning.

    Raises:
        DataPreparationError: when ``root`` holds no BetaSeg cell.
    """
    import yaml

    root = Path(root)
    cells = find_betaseg_cells(root)
    if not cells:
        raise DataPreparationError(f"{root}: holds no BetaSeg cell (no <cell>_source.tif found).")
    groups: dict[str, list] = {"all": [], "high": [], "low": []}
    for cell in cells:
        missing = [c for c in classes if c not in cell["masks"]]
        if missing:
            print(f"betaseg: {cell['name']}: no mask for {', '.join(missing)}; left out of the specs.", file=sys.stderr)
            continue
        entry = {
            "name": cell["name"],
            "condition": cell["condition"],
            "image": str(cell["image"].relative_to(root)),
            "masks": {c: {"path": str(cell["masks"][c].relative_to(root)), "threshold": "nonzero"} for c in classes},
        }
        groups["all"].append(entry)
        if cell["condition"] != "unknown":
            groups[cell["condition"].split()[0]].append(entry)
    written = []
    for group, entries in groups.items():
        if entries:
            path = root / f"betaseg_{group}.yaml"
            header = f"# BetaSeg cells ({group}) for scsam-prepare --spec; paths relative to this file.\n"
            path.write_text(header + yaml.safe_dump({"classes": list(classes), "cells": entries}, sort_keys=False))
            written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``scripts/download_betaseg.py``."""
    parser = argparse.ArgumentParser(
        prog="download_betaseg",
        description=(
            "Download the BetaSeg archive (FIB-SEM beta cells with organelle masks), unpack it into --out and write "
            "cell specs for scsam-prepare (betaseg_all/high/low.yaml). Offline it stops at once and writes nothing."
        ),
    )
    parser.add_argument("--out", help="folder to unpack into (e.g. data/betaseg_raw)")
    parser.add_argument("--archive", help="install a local copy of the archive instead of downloading it")
    parser.add_argument("--spec-only", action="store_true", help="only (re)write the specs of an unpacked --out")
    parser.add_argument("--classes", default=",".join(PAPER_CLASSES), help="classes of the specs")
    parser.add_argument("--url", default=ARCHIVE_URL, help="archive URL")
    parser.add_argument("--sha256", default=ARCHIVE_SHA256, help="expected SHA-256 ('' skips the check)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the server")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    parser.add_argument("--info", action="store_true", help="print where BetaSeg lives and what it downloads")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the BetaSeg download; exit status 0 on success, 2 when it cannot (nothing written)."""
    args = build_parser().parse_args(argv)
    if args.info:
        print(describe())
        return 0
    if not args.out:
        build_parser().error("--out is required (or --info)")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        if args.spec_only:
            specs = write_cell_specs(args.out, classes=classes)
        else:
            specs = download_betaseg(
                args.out,
                archive=args.archive,
                url=args.url,
                sha256=args.sha256 or None,
                classes=classes,
                timeout=args.timeout,
                keep_archive=args.keep_archive,
            )
    except DataPreparationError as error:
        print(f"download_betaseg: error: {error}", file=sys.stderr)
        return 2
    for spec in specs:
        print(spec)
    return 0
