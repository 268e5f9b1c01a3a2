#!/usr/bin/env bash
# The Model Zoo installs a bundle's packages from its metadata.json: this builds a fresh virtual environment from
# exactly those pins (monai_version, pytorch_version, numpy_version, required_packages_version, as the Zoo's
# ci/get_bundle_requirements.py reads them), packages the bundle, and runs the Zoo CI's checks on it there
# (tests/model_zoo/zoo_ci.py, tiny random-weight encoders), in a Python that cannot import this repository.
# Not part of the test suite: it downloads and installs about 3 GB of packages.
# Usage: bash scripts/zoo_pins_check.sh OUT_DIR   (writes OUT_DIR/zoo_pins_check.log and OUT_DIR/pins.txt)
set -euo pipefail
out=${1:?usage: zoo_pins_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$out/zoo_pins_check.log"
PY="${PYTHON:-python3}"
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  "$PY" - "$root/bundle/configs/metadata.json" > "$out/pins.txt" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
pins.update(meta["required_packages_version"])
print("\n".join(f"{name}=={version}" for name, version in pins.items()))
EOF
  echo "== pins (metadata.json)"; cat "$out/pins.txt"
  "$PY" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet --upgrade pip
  echo "== installing exactly the pins"
  "$work/venv/bin/python" -m pip install --quiet -r "$out/pins.txt"
  # the Zoo CI's own tool for verify_metadata (its requirements-dev), at the version the tests use
  "$work/venv/bin/python" -m pip install --quiet "$(grep '^jsonschema==' "$root/requirements-lock.txt")"
  # pip check reads every installed wheel's tags; pip 26 refuses itk 5.4.7's own WHEEL file ("itk-5.4.7-cp311-abi3-
  # ..." is not a tag), so a failure of the check itself is reported, not fatal: the checks below import everything
  "$work/venv/bin/python" -m pip check || echo "(pip check failed, see above)"
  echo "== packaging the bundle"
  "$PY" "$root/scripts/package_bundle.py" --output "$work/dist"
  echo "== the Model Zoo CI's checks, in the pinned environment"
  cd "$work"
  OMP_NUM_THREADS=2 "$work/venv/bin/python" -I "$root/tests/model_zoo/zoo_ci.py" \
    "$work/dist/scsam_em_organelle_segmentation" "$root/tests/data/model_zoo/meta_schema_20240725.reconstructed.json"
  echo "== PASS"
} 2>&1 | tee "$log"
