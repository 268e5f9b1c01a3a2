# Shared set-up of scripts/demo.sh and scripts/test.sh: create .venv if absent and install the project.
# Sourced, not run. Installs the pinned versions in requirements-lock.txt (torch 2.14.1 / torchvision 0.29.1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.scsam-installed
HASH="$(cat pyproject.toml requirements-lock.txt scripts/_env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing scsam-monai and its pinned dependencies into .venv (first run: several minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -r requirements-lock.txt -e ".[test,label]"
  # MONAI Label (docs/monai_label.md) without its declared dependencies: they would replace numpy / torch; the
  # ones our app needs come with the label extra above
  .venv/bin/python -m pip install --quiet --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
  echo "$HASH" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
