#!/usr/bin/env bash
# The Model Zoo CI's checks (tests/model_zoo/zoo_ci.py: ci/verify_bundle.py of github.com/Project-MONAI/model-zoo,
# with its exclusion lists) on the packaged bundle with the DEFAULT configuration, SAM ViT-B and the 512-wide MAE,
# in a Python that cannot import this repository. Stand-ins of the default architectures with random weights stand
# where the checkpoints would be: first only the SAM file large_files.yml downloads (the bundle as the CI sees it),
# then also the MAE encoder and a trained head, which nobody publishes. The metadata schema is this repository's
# reconstruction of the Zoo's meta_schema_20240725.json (the official file could not be downloaded here).
# Not part of the test suite: ViT-B on a 1024 x 1024 canvas on a CPU, one compilation and a few forward passes
# (minutes); the suite runs the same checks on the tiny profile (tests/model_zoo/test_ci_checks.py).
# Usage: bash scripts/zoo_verify.sh LOG [MODEL_INFO]
#   LOG         the log to write, the command at its top (e.g. docs/reports/zoo_verify_<date>.log)
#   MODEL_INFO  the Zoo's models/model_info.json, to check that the version is not published already (optional)
set -euo pipefail
log=${1:?usage: zoo_verify.sh LOG [MODEL_INFO]}
model_info=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$(dirname "$log")"
log=$(cd "$(dirname "$log")" && pwd)/$(basename "$log")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY="${PYTHON:-python3}"
extra=()
if [[ -n "$model_info" ]]; then
  extra=(--model_info "$(cd "$(dirname "$model_info")" && pwd)/$(basename "$model_info")")
fi
{
  echo "# bash scripts/zoo_verify.sh $*"
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(cd "$root" && git diff --quiet HEAD -- scsam_monai bundle 2>/dev/null || echo '(with uncommitted changes)')"
  echo "# $(nproc) CPU cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}, $("$PY" -c 'import platform; print(platform.processor() or platform.machine())')"
  if [[ -n "$model_info" ]]; then echo "# model_info.json sha256 $(sha256sum "$model_info" | cut -d' ' -f1)"; fi
  echo "== packaging the bundle"
  "$PY" "$root/scripts/package_bundle.py" --output "$work/dist"
  cd "$work"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" -I "$root/tests/model_zoo/zoo_ci.py" \
    "$work/dist/scsam_em_organelle_segmentation" \
    "$root/tests/data/model_zoo/meta_schema_20240725.reconstructed.json" --profile default "${extra[@]}"
} 2>&1 | tee "$log"
