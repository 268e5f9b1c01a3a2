"""The Model Zoo CI's bundle checks, run on a packaged bundle by a Python that cannot import this repository.

The checks are those of ``ci/verify_bundle.py`` (``verify``, full mode) of github.com/Project-MONAI/model-zoo, read
at commit dfae206 (2024-10-11), with the exclusion lists of its ``ci/bundle_custom_data.py``:
directory (large files downloaded and hash-checked, necessary and preferred files), version and changelog,
metadata format (MONAI's ``verify_metadata`` against the schema), properties (only for ``supported_apps`` that
have a properties file), ``verify_net_in_out`` and ``ckpt_export`` (scripted), each called as the CI calls it on
``configs/inference.yaml`` alone. Then what the model card offers instead of scripting (a traced export), and that
the bundle stands alone.

Run as ``python -I zoo_ci.py BUNDLE_DIR SCHEMA [--profile tiny|default] [--model_info FILE]``. Like the CI, it puts
the bundle folder first on ``sys.path``; before that it removes this repository's editable install from the import
machinery and checks that ``scsam_monai`` is NOT importable, so every ``scsam_monai.`` target resolves inside the
bundle. ``SCHEMA`` is the metadata schema: this repository has only a reconstruction of the Zoo's
``meta_schema_20240725.json`` (``tests/data/model_zoo/meta_schema_20240725.reconstructed.json``; the official file
cannot be downloaded where these checks were written), and the output says which file was used.
``--model_info`` is the Zoo's ``models/model_info.json`` (the version must not be published already).

Profiles:

- ``tiny`` (the test suite, seconds): the bundle's tiny random-encoder profile (override
  ``tiny_random_encoders=True``), which needs no checkpoint file.
- ``default`` (``scripts/zoo_verify.sh``, minutes on a CPU): the configuration as shipped, SAM ViT-B and the
  512-wide MAE, with stand-ins of the default architectures (random weights) where the files would be. First as
  the CI would see the bundle: only the file ``large_files.yml`` downloads, here a stand-in built by
  segment-anything's ``sam_model_registry["vit_b"]``. Then with stand-ins of the two files nobody publishes: the
  MAE encoder (the bundle's own MAE pre-training model, ``mae_vit_512``, saved as pre-training saves it) and a
  trained head (``models/model.pt``: ``network_def``'s state dict, the CI's ``_produce_fake_weights`` recipe).

Every check prints ``CHECK <name>: <outcome>``: ``PASS``; ``EXCLUDED <list>`` when it fails for the reason that
the Zoo's exclusion list names (the CI skips the check for the bundles on that list; the model card asks for it);
``NEEDS REAL FILE`` when only the real file can pass it (a stand-in has another hash). Any other failure stops the
run with a non-zero exit status. A summary table ends the output.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BUNDLE_NAME = "scsam_em_organelle_segmentation"
ZOO_COMMIT = "dfae206df112837d817e78d3727c9f32b3b52e82"
"""The Model Zoo commit whose ``ci/`` these checks follow."""

EXCLUSIONS = {
    "exclude_verify_preferred_files_list": "models/model.pt is not shipped: no trained head is published",
    "exclude_verify_shape_list": (
        "network_def reads models/mae_encoder.pth, which nobody publishes (the bundle's MAE pre-training makes it) "
        "and large_files.yml therefore cannot list"
    ),
    "exclude_verify_torchscript_list": (
        "the network cannot be scripted: segment-anything's image encoder is not scriptable (as in vista2d), nor are "
        "the bundle's encoder wrappers and head; the bundle exports by tracing"
    ),
}
"""The Zoo's exclusion lists the model card asks for, with the reason each one is needed."""


@dataclass
class Expected:
    """A failure the check is expected to have, and what it then means.

    Args:
        outcome: what the check's line says then (``EXCLUDED <list>`` or ``NEEDS REAL FILE``).
        reason: why, in words.
        matches: whether the failure is the expected one (else it is a real failure and stops the run).
    """

    outcome: str
    reason: str
    matches: Callable[[BaseException], bool]


def _chain(err: BaseException) -> list[BaseException]:
    """An exception and its causes and contexts, outermost first."""
    chain: list[BaseException] = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _messages(err: BaseException) -> str:
    """The messages of an exception and of its causes and contexts."""
    return " <- ".join(f"{type(e).__name__}: {e}" for e in _chain(err))


def _root(err: BaseException) -> str:
    """The innermost cause's first line: what actually went wrong."""
    inner = _chain(err)[-1]
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}"[:300]


def _raised_in(err: BaseException, folder: str) -> bool:
    """Whether the exception (or one of its causes) was raised from code in ``folder`` (e.g. ``torch/jit``)."""
    while err is not None:
        if any(folder in frame.filename.replace(os.sep, "/") for frame in traceback.extract_tb(err.__traceback__)):
            return True
        err = err.__cause__ or err.__context__
    return False


def excluded(name: str, matches: Callable[[BaseException], bool]) -> Expected:
    """The failure that the Zoo's exclusion list ``name`` declares (:data:`EXCLUSIONS`)."""
    return Expected(f"EXCLUDED {name}", EXCLUSIONS[name], matches)


class Report:
    """The checks' outcomes, printed as they come and as a table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def line(self, name: str, outcome: str, seconds: float, detail: str = "") -> None:
        self.rows.append((name, outcome, detail))
        print(f"CHECK {name}: {outcome} ({seconds:.1f} s)" + (f" - {detail}" if detail else ""), flush=True)

    def check(self, name: str, run: Callable[[], Any], expected: Expected | None = None) -> Any:
        """Run one check; PASS, the expected failure's outcome, or the failure raised again."""
        started = time.time()
        try:
            result = run()
        except Exception as err:
            if expected is None or not expected.matches(err):
                print(f"CHECK {name}: FAILED - {_messages(err)[:2000]}", flush=True)
                raise
            self.line(name, expected.outcome, time.time() - started, f"{expected.reason} [{_root(err)}]")
            return None
        outcome = "PASS" if expected is None else "PASS (the declared exclusion is not needed here)"
        self.line(name, outcome, time.time() - started, result if isinstance(result, str) else "")
        return result

    def table(self) -> None:
        width = max(len(name) for name, _, _ in self.rows)
        print("\n== summary")
        for name, outcome, _ in self.rows:
            print(f"{name:<{width}}  {outcome}")


# ---- the CI's checks (ci/verify_bundle.py, ci/utils.py), transcribed for one bundle folder ----------------------


def download_large_files(bundle: str) -> None:
    """``ci/utils.py``'s ``download_large_files``: a file already there must have the listed hash."""
    from monai.apps.utils import download_url
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "large_files.yml"))
    for entry in parser.get()["large_files"]:
        entry = dict(entry, fuzzy=True, filepath=os.path.join(bundle, entry["path"]))
        entry.pop("path")
        for key in ("hash_val", "hash_type"):
            if entry.get(key, None) == "":
                entry.pop(key)
        download_url(**entry)


def necessary_files(bundle: str) -> None:
    """``verify_bundle_directory``: ``configs/metadata.json`` and ``LICENSE``."""
    for name in ("configs/metadata.json", "LICENSE"):
        if not os.path.exists(os.path.join(bundle, name)):
            raise ValueError(f"necessary file {name} is not existing.")


def preferred_files(bundle: str) -> None:
    """``verify_bundle_directory``: ``models/model.pt`` and an inference config."""
    if not any(os.path.isfile(os.path.join(bundle, "configs", f"inference.{s}")) for s in ("json", "yaml", "yml")):
        raise ValueError("inference config file is not existing.")
    if not os.path.exists(os.path.join(bundle, "models/model.pt")):
        raise ValueError("necessary file models/model.pt is not existing.")


def verify_version_changes(bundle: str, model_info: str | None) -> str:
    """``verify_version_changes``: the version is in the changelog and, with the Zoo's model_info.json, new."""
    metadata = json.load(open(os.path.join(bundle, "configs", "metadata.json")))
    for key in ("version", "changelog"):
        if key not in metadata:
            raise ValueError(f"'{key}' is missing in configs/metadata.json.")
    if metadata["version"] not in metadata["changelog"]:
        raise ValueError(f"version number: {metadata['version']} is missing in 'changelog'.")
    if model_info is None:
        return "version in changelog; not compared with the Zoo's model_info.json (none given)"
    published = json.load(open(model_info))
    if f"{BUNDLE_NAME}_v{metadata['version']}" in published:
        raise ValueError(f"version number: {metadata['version']} is already used.")
    return f"version {metadata['version']} in changelog and not in {os.path.basename(model_info)}"


def verify_metadata_format(bundle: str, schema: str) -> None:
    """``verify_metadata_format``: MONAI's ``verify_metadata`` (jsonschema) against the schema file."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(bundle, "configs", "metadata.json"), filepath=schema)


def verify_bundle_properties(bundle: str) -> str:
    """``verify_bundle_properties``: checked for each ``supported_apps`` entry with a properties file in the Zoo."""
    apps = json.load(open(os.path.join(bundle, "configs", "metadata.json"))).get("supported_apps", {})
    if apps:
        raise ValueError(f"supported_apps {sorted(apps)}: their properties files are the Zoo's, not checked here.")
    return "supported_apps is empty: the CI checks no properties"


def missing_infer_properties(bundle: str) -> list[str]:
    """MONAI's required inference properties (``monai.bundle.properties.InferProperties``) that ``inference.yaml``
    does not define: what a supported app's properties check would ask for. Reported, not a CI check."""
    from monai.bundle import ConfigParser
    from monai.bundle.properties import InferProperties

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.yaml"))
    return [name for name, prop in InferProperties.items() if prop.get("required") and prop["id"] not in parser]


def verify_data_shape(bundle: str, **override: Any) -> None:
    """``verify_data_shape``: ``verify_net_in_out`` on ``network_def`` (the CI passes ``bundle_root`` only)."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=os.path.join(bundle, "configs", "metadata.json"),
        config_file=os.path.join(bundle, "configs", "inference.yaml"),
        bundle_root=bundle,
        **override,
    )


def verify_torchscript(bundle: str, **override: Any) -> None:
    """``verify_torchscript``: ``ckpt_export`` of ``models/model.pt`` as the CI calls it (scripted)."""
    from monai.bundle import ckpt_export

    ckpt_export(
        net_id="network_def",
        filepath=os.path.join(bundle, "models", "verify_model.ts"),
        ckpt_file=os.path.join(bundle, "models", "model.pt"),
        meta_file=os.path.join(bundle, "configs", "metadata.json"),
        config_file=os.path.join(bundle, "configs", "inference.yaml"),
        bundle_root=bundle,
        **override,
    )


def sam_encoder_scripting() -> str:
    """Why scripting fails at its root: ``torch.jit.script`` of segment-anything's ``ImageEncoderViT`` alone."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    encoder = ImageEncoderViT(
        img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, window_size=2, use_rel_pos=True,
        out_chans=8, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )  # fmt: skip
    try:
        torch.jit.script(encoder)
    except Exception as err:  # noqa: BLE001 - the failure is what is reported
        return f"torch.jit.script(segment_anything ImageEncoderViT) fails: {_root(err)}"
    return "torch.jit.script(segment_anything ImageEncoderViT) succeeds"


def produce_fake_weights(bundle: str, **override: Any) -> str:
    """The CI's ``_produce_fake_weights``: ``network_def``'s state dict as ``models/model.pt`` (a stand-in)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=os.path.join(bundle, "configs", "inference.yaml"))
    parser.read_meta(f=os.path.join(bundle, "configs", "metadata.json"))
    for key, value in {"bundle_root": bundle, **override}.items():
        parser[key] = value
    torch.manual_seed(0)
    path = os.path.join(bundle, "models", "model.pt")
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


# ---- what the model card offers instead of scripting, and the bundle standing alone ------------------------------


def traced_export(bundle: str, size: tuple[int, int], **override: Any) -> str:
    """``ckpt_export --use_trace`` at ``size`` (the model card's command), loaded and run: background + 3 classes."""
    import torch
    from monai.bundle import ckpt_export

    target = os.path.join(bundle, "models", "model.ts")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # the trace fixes the size, as the card says
    ckpt_export(
        net_id="network_def",
        filepath=target,
        ckpt_file=os.path.join(bundle, "models", "model.pt"),
        meta_file=os.path.join(bundle, "configs", "metadata.json"),
        config_file=os.path.join(bundle, "configs", "inference.yaml"),
        bundle_root=bundle,
        use_trace=True,
        input_shape=[1, 1, *size],
        **override,
    )
    with torch.no_grad():
        shape = tuple(torch.jit.load(target)(torch.rand(1, 1, *size)).shape)
    if shape != (1, 4, *size):
        raise ValueError(f"the traced model returned {shape}, not (1, 4, {size[0]}, {size[1]}).")
    return f"traced, loaded and run: {shape}"


def stands_alone(bundle: str) -> str:
    """``bundle_root`` is the bundle folder (".") and data preparation runs from the bundle's own package."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=os.path.join(bundle, "configs", "inference.yaml"))
    if parser.get_parsed_content("ckpt_dir") != "./models":
        raise ValueError(f"ckpt_dir is {parser.get_parsed_content('ckpt_dir')!r}, not './models'.")
    from scsam_monai.cli import prepare

    if not prepare.__file__.startswith(bundle):
        raise ValueError(f"data preparation imported from {prepare.__file__}, not from the bundle.")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            prepare.main(["--help"])
    except SystemExit as stop:
        if stop.code != 0:
            raise ValueError(f"python -m scsam_monai.cli.prepare --help exited with {stop.code}.") from None
    return "bundle_root '.'; data preparation runs from the bundle"


def card_inference(bundle: str) -> str:
    """The model card's inference command as a Zoo user types it in the bundle folder (tiny random encoders)."""
    import subprocess
    import tempfile

    import numpy as np
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "slice.tif")
        tifffile.imwrite(image, (np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8))
        command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--meta_file", "configs/metadata.json"]
        command += ["--config_file", "configs/inference.yaml", "--logging_file", "configs/logging.conf"]
        command += ["--input", image, "--output_dir", tmp, "--tiny_random_encoders", "true"]
        # "-m" puts the folder it runs in (the bundle) first on sys.path: the bundle's own package is imported
        result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise ValueError(f"exited with {result.returncode}: {(result.stdout + result.stderr)[-2000:]}")
        label = tifffile.imread(os.path.join(tmp, "predictions", "slice_seg.tif"))
        if label.shape != (40, 56):
            raise ValueError(f"the label map has shape {label.shape}, not (40, 56).")
    return "run inference from the bundle folder wrote predictions/slice_seg.tif (40 x 56)"


# ---- stand-ins of the default architectures (random weights) ----------------------------------------------------


def expected_paths(bundle: str) -> dict[str, str]:
    """Where ``inference.yaml`` reads the SAM and MAE checkpoints, and where ``large_files.yml`` puts the SAM one."""
    import yaml
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=os.path.join(bundle, "configs", "inference.yaml"))
    parser["bundle_root"] = bundle
    (entry,) = yaml.safe_load(open(os.path.join(bundle, "large_files.yml")))["large_files"]
    paths = {
        "sam": os.path.normpath(parser.get_parsed_content("sam_checkpoint")),
        "mae": os.path.normpath(parser.get_parsed_content("mae_checkpoint")),
        "large_file": os.path.normpath(os.path.join(bundle, entry["path"])),
    }
    if paths["sam"] != paths["large_file"]:
        raise ValueError(f"inference.yaml reads SAM from {paths['sam']}, large_files.yml writes {paths['large_file']}.")
    return paths


def write_sam_standin(path: str, arch: str = "vit_b") -> str:
    """A SAM checkpoint of ``arch`` with random weights: segment-anything's ``sam_model_registry[arch]`` state dict."""
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    torch.save(sam_model_registry[arch](checkpoint=None).state_dict(), path)
    return f"{os.path.relpath(path)}: segment-anything {arch}, random weights"


def write_mae_standin(path: str, arch: str = "mae_vit_512") -> str:
    """An MAE encoder of ``arch`` with random weights, saved as the bundle's MAE pre-training saves it."""
    import torch

    from scsam_monai.mae.model import MaskedAutoencoder

    torch.manual_seed(0)
    MaskedAutoencoder(arch=arch).save_encoder(path)
    return f"{os.path.relpath(path)}: the bundle's MaskedAutoencoder({arch!r}) encoder, random weights"


# ---- the runs --------------------------------------------------------------------------------------------------


def isolate(bundle: str) -> None:
    """Make ``scsam_monai`` importable from the bundle only (as in the CI, where this repository is not installed)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
    sys.path_importer_cache.clear()
    try:
        import scsam_monai  # noqa: F401

        raise SystemExit(f"scsam_monai is importable without the bundle ({sys.modules['scsam_monai'].__file__})")
    except ModuleNotFoundError:
        pass
    sys.path.insert(0, bundle)  # what verify_bundle.verify does
    import scsam_monai

    if os.path.dirname(scsam_monai.__file__) != os.path.join(bundle, "scsam_monai"):
        raise SystemExit(f"scsam_monai imported from {scsam_monai.__file__}, not from the bundle")
    print("scsam_monai imported from the bundle", flush=True)


def _common(report: Report, bundle: str, schema: str, model_info: str | None) -> None:
    """Version, metadata format and properties: the same for every profile."""
    report.check("verify_version_changes", lambda: verify_version_changes(bundle, model_info))
    note = ""
    if "reconstructed" in os.path.basename(schema):
        note = (
            " (a reconstruction of the Zoo's meta_schema_20240725.json, which metadata.json names; the official file "
            "could not be downloaded here)"
        )
    print(f"metadata schema: {schema}{note}", flush=True)
    report.check("verify_metadata_format", lambda: verify_metadata_format(bundle, schema))
    report.check("verify_bundle_properties", lambda: verify_bundle_properties(bundle))
    missing = missing_infer_properties(bundle)
    print(
        "NOTE (not a CI check): MONAI's required InferProperties that inference.yaml does not define: "
        f"{missing or 'none'} (a supported app's properties file would ask for them)",
        flush=True,
    )


def _scripting(err: BaseException) -> bool:
    return _raised_in(err, "torch/jit/")


def run_tiny(report: Report, bundle: str, schema: str, model_info: str | None) -> None:
    """The CI's checks on the tiny random-encoder profile (no checkpoint file needed), seconds."""
    import yaml

    tiny = {"tiny_random_encoders": True}
    head = produce_fake_weights(bundle, **tiny)
    print(f"stand-in: {os.path.relpath(head)}: network_def's state dict (the CI's _produce_fake_weights)", flush=True)
    entries = yaml.safe_load(open(os.path.join(bundle, "large_files.yml")))["large_files"]
    if not entries or not all(e.get("hash_val") and e.get("hash_type") and e.get("url") for e in entries):
        raise SystemExit(f"large_files.yml entries need url, hash_val and hash_type: {entries}")
    print("large files: not downloaded (the tiny profile reads no checkpoint); each entry has url and hash")
    report.check("verify_bundle_directory: necessary files", lambda: necessary_files(bundle))
    report.check("verify_bundle_directory: preferred files", lambda: preferred_files(bundle))
    _common(report, bundle, schema, model_info)
    report.check("verify_data_shape", lambda: verify_data_shape(bundle, device="cpu", **tiny))
    report.check("verify_data_shape (48 x 48)", lambda: verify_data_shape(bundle, device="cpu", any=48, **tiny))
    scripting = excluded("exclude_verify_torchscript_list", _scripting)
    report.check("verify_torchscript", lambda: verify_torchscript(bundle, **tiny), scripting)
    print(f"NOTE: {sam_encoder_scripting()}", flush=True)
    report.check("traced export (model card)", lambda: traced_export(bundle, (48, 64), **tiny))
    report.check("bundle stands alone", lambda: stands_alone(bundle))
    report.check("model card inference from the bundle folder", lambda: card_inference(bundle))


def run_default(report: Report, bundle: str, schema: str, model_info: str | None) -> None:
    """The CI's checks on the configuration as shipped, with stand-ins of the default architectures."""
    paths = expected_paths(bundle)
    for path in (paths["mae"], os.path.join(bundle, "models", "model.pt")):
        if os.path.exists(path):
            raise SystemExit(f"{path} exists: the default profile starts from the bundle as packaged.")
    print("\n== the bundle as shipped, with the file large_files.yml downloads", flush=True)
    print(f"stand-in: {write_sam_standin(paths['sam'])}", flush=True)
    real_file = Expected(
        "NEEDS REAL FILE",
        "large_files.yml's sha256 is that of the official sam_vit_b_01ec64.pth; the stand-in has another",
        lambda err: "hash check" in _messages(err),
    )
    report.check("verify_bundle_directory: download_large_files", lambda: download_large_files(bundle), real_file)
    report.check("verify_bundle_directory: necessary files", lambda: necessary_files(bundle))
    no_head = excluded("exclude_verify_preferred_files_list", lambda err: "models/model.pt" in str(err))
    report.check("verify_bundle_directory: preferred files", lambda: preferred_files(bundle), no_head)
    _common(report, bundle, schema, model_info)
    no_mae = excluded("exclude_verify_shape_list", lambda err: "mae_encoder.pth" in _messages(err))
    report.check("verify_data_shape", lambda: verify_data_shape(bundle), no_mae)
    print("verify_torchscript: needs models/model.pt; run below, with the stand-ins", flush=True)

    print("\n== with stand-ins of the files nobody publishes (MAE encoder, trained head)", flush=True)
    print(f"stand-in: {write_mae_standin(paths['mae'])}", flush=True)
    head = produce_fake_weights(bundle)
    print(f"stand-in: {os.path.relpath(head)}: network_def's state dict (the CI's _produce_fake_weights)", flush=True)
    report.check("verify_bundle_directory: preferred files (stand-in model.pt)", lambda: preferred_files(bundle))
    report.check("verify_data_shape (stand-ins)", lambda: verify_data_shape(bundle))
    scripting = excluded("exclude_verify_torchscript_list", _scripting)
    report.check("verify_torchscript (stand-ins)", lambda: verify_torchscript(bundle), scripting)
    print(f"NOTE: {sam_encoder_scripting()}", flush=True)
    report.check("traced export (model card, 1024 x 1024)", lambda: traced_export(bundle, (1024, 1024)))
    report.check("bundle stands alone", lambda: stands_alone(bundle))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="the packaged bundle folder")
    parser.add_argument("schema", help="the metadata schema (JSON)")
    parser.add_argument("--profile", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--model_info", default=None, help="the Zoo's models/model_info.json")
    args = parser.parse_args(argv)
    bundle = os.path.abspath(args.bundle)
    print(f"Model Zoo CI checks (ci/verify_bundle.py at {ZOO_COMMIT[:7]}), profile {args.profile}: {bundle}")
    isolate(bundle)
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    report = Report()
    (run_tiny if args.profile == "tiny" else run_default)(report, bundle, args.schema, args.model_info)
    report.table()
    excluded_lists = sorted({outcome.split()[1] for _, outcome, _ in report.rows if outcome.startswith("EXCLUDED")})
    print(f"exclusion lists the model card declares: {', '.join(excluded_lists) or 'none'}")
    print("PASS: every check passed or failed only as declared")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
