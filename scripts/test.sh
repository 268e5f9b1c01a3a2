#!/usr/bin/env bash
# Create/use .venv, install the project, run the test suite.
# Extra arguments go to pytest, e.g.: bash scripts/test.sh -k metrics
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python -m pytest "$@"
