"""The Model Zoo CI's bundle checks (``ci/verify_bundle.py`` of github.com/Project-MONAI/model-zoo), run on a
packaged bundle by a Python that cannot import this repository's package.

Run as ``python -I zoo_ci.py BUNDLE_DIR SCHEMA`` (a child process of ``test_ci_checks.py``). Like the CI, it puts
the bundle folder first on ``sys.path``; before that it removes this repository's editable install from the import
machinery and checks that ``scsam_monai`` is NOT importable, so every ``scsam_monai.`` target resolves inside the
bundle. Steps, in the CI's order: required and preferred files, version in the changelog, metadata against the
schema (MONAI's ``verify_metadata``), a stand-in ``models/model.pt`` made as the CI's ``_produce_fake_weights``
makes it, ``verify_net_in_out`` and a traced ``ckpt_export`` on ``configs/inference.yaml`` ALONE. The network runs
on the bundle's tiny random-encoder profile (``tiny_random_encoders=True`` override) so that this takes seconds;
the CI runs the default (SAM ViT-B from large_files.yml, the MAE encoder).
"""

from __future__ import annotations

import json
import os
import sys

bundle, schema = sys.argv[1], sys.argv[2]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
try:
    import scsam_monai  # noqa: F401

    raise SystemExit(f"scsam_monai is importable without the bundle ({sys.modules['scsam_monai'].__file__})")
except ModuleNotFoundError:
    pass
sys.path.insert(0, bundle)  # what verify_bundle.verify does

import torch  # noqa: E402
import yaml  # noqa: E402
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out  # noqa: E402

import scsam_monai  # noqa: E402

assert os.path.dirname(scsam_monai.__file__) == os.path.join(bundle, "scsam_monai"), scsam_monai.__file__
print("scsam_monai imported from the bundle")

# verify_bundle_directory: necessary and preferred files; large files with a hash each
for name in ("configs/metadata.json", "LICENSE", "configs/inference.yaml", "docs/README.md"):
    assert os.path.isfile(os.path.join(bundle, name)), name
entries = yaml.safe_load(open(os.path.join(bundle, "large_files.yml")))["large_files"]
assert entries and all(e.get("hash_val") and e.get("hash_type") and e.get("url") for e in entries), entries
# verify_version_changes
meta_file = os.path.join(bundle, "configs", "metadata.json")
metadata = json.load(open(meta_file))
assert metadata["version"] in metadata["changelog"], metadata["version"]
# verify_metadata_format
verify_metadata(meta_file=meta_file, filepath=schema)
print("metadata verified")

config = os.path.join(bundle, "configs", "inference.yaml")
overrides = {"bundle_root": bundle, "tiny_random_encoders": True}
# _produce_fake_weights: network_def's own state dict as models/model.pt (a stand-in, never shipped)
parser = ConfigParser()
parser.read_config(f=config)
parser.read_meta(f=meta_file)
for key, value in overrides.items():
    parser[key] = value
torch.manual_seed(0)
torch.save(parser.get_parsed_content("network_def").state_dict(), os.path.join(bundle, "models", "model.pt"))
assert os.path.isfile(os.path.join(bundle, "models", "model.pt"))
# verify_data_shape: the CI's call (no `any`: spatial "*" becomes 1), then a realistic size
verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config, device="cpu", **overrides)
verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config, device="cpu", any=48, **overrides)
print("net in/out verified")
# verify_torchscript, traced (the bundle is in exclude_verify_torchscript_list for the scripted default)
target = os.path.join(bundle, "models", "verify_model.ts")
ckpt_export(
    net_id="network_def",
    filepath=target,
    ckpt_file=os.path.join(bundle, "models", "model.pt"),
    meta_file=meta_file,
    config_file=config,
    use_trace=True,
    input_shape=[1, 1, 48, 64],
    **overrides,
)
traced = torch.jit.load(target)
assert tuple(traced(torch.rand(1, 1, 48, 64)).shape) == (1, 4, 48, 64)  # background, then 3 classes
print("traced TorchScript exported and loaded")

# the bundle stands alone: bundle_root "." (its folder), data preparation from its own package
parser = ConfigParser()
parser.read_config(f=config)
assert parser.get_parsed_content("ckpt_dir") == "./models", parser.get_parsed_content("ckpt_dir")
from scsam_monai.cli import prepare  # noqa: E402

assert prepare.__file__.startswith(bundle), prepare.__file__
try:
    prepare.main(["--help"])
except SystemExit as stop:
    assert stop.code == 0, stop.code
print("data preparation runs from the bundle")
