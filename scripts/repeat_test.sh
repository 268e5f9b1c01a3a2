#!/usr/bin/env bash
# Run one test N times in a row and stop at the first failure; one line per run (result, seconds, load average) in LOG.
#   bash scripts/repeat_test.sh N TEST_ID LOG
# e.g. the torchrun shutdown evidence of docs/failure_modes.md ("Clean shutdown"):
#   bash scripts/repeat_test.sh 20 tests/engines/test_distributed.py::test_torchrun_two_ranks_train_and_rank0_saves \
#     docs/reports/torchrun_20_runs_2026-11-28.log
# Exit status 0 only when all N runs passed. Each run's pytest output goes to LOG.run_<k>.txt (deleted when it passed).
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: bash scripts/repeat_test.sh N TEST_ID LOG" >&2
  exit 2
fi
N="$1"; TEST="$2"; LOG_ARG="$3"
CALLER="$(pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # cd to the repository root, .venv/bin on PATH
case "$LOG_ARG" in /*) LOG="$LOG_ARG" ;; *) LOG="$CALLER/$LOG_ARG" ;; esac
mkdir -p "$(dirname "$LOG")"
echo "start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) cpus $(nproc) test $TEST" > "$LOG"
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  if python -m pytest -q -p no:cacheprovider "$TEST" > "$LOG.run_$i.txt" 2>&1; then result=pass; else result=FAIL; fi
  echo "run $i $result $(( $(date +%s) - start ))s $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg) $(tail -1 "$LOG.run_$i.txt")" >> "$LOG"
  if [ "$result" = FAIL ]; then
    echo "end $(date -u +%FT%TZ): run $i failed, see $LOG.run_$i.txt" >> "$LOG"
    exit 1
  fi
  rm -f "$LOG.run_$i.txt"
done
echo "end $(date -u +%FT%TZ): $N of $N passed" >> "$LOG"
