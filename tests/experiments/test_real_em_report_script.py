"""The scheduling of ``experiments/real_em_report.sh``, run with a stub ``python`` (no training).

The script pre-trains the MAE beside the row groups that do not embed with it (at a lower CPU priority) and starts
the groups with ScSAM or MAE* only when the pre-training has finished. Here every command it runs is a stub that
records when it started and ended, its arguments and its niceness, and writes the files the script checks for.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

STUB_ENV = """set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/stub_bin:$PATH"
"""

# A stub of python: appends "start|end <what> <niceness> <args>" to $STUB_LOG and writes the files the script checks.
STUB_PYTHON = r"""#!/usr/bin/env bash
set -euo pipefail
nice_value="$(ps -o ni= -p $$ | tr -d ' ')"
what="other"
out=""
args=("$@")
methods=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    scripts/prepare_data.py) what="prepare" ;;
    pretraining) what="pretraining" ;;
    scripts/run_experiments.py) what="rows" ;;
    --out|--output_dir) out="${args[$((i + 1))]}" ;;
    --methods) methods="${args[$((i + 1))]}" ;;
  esac
done
if [ "$what" = rows ]; then what="rows:$methods"; fi
echo "start $what $nice_value $*" >> "$STUB_LOG"
case "$what" in
  prepare) mkdir -p "$out"; echo '{}' > "$out/datalist.json" ;;
  pretraining)
    sleep "${STUB_PRETRAIN_SECONDS:-2}"
    if [ -n "${STUB_PRETRAIN_FAILS:-}" ]; then echo "end $what" >> "$STUB_LOG"; exit 1; fi
    mkdir -p "$out/checkpoints"; touch "$out/checkpoints/mae_checkpoint_final.pt" "$out/mae_encoder.pth" ;;
  rows:*) sleep 0.5; mkdir -p "$out"; echo "method" > "$out/results.csv" ;;
esac
echo "end $what" >> "$STUB_LOG"
"""


def _events(log: Path) -> list[tuple[str, str, str]]:
    """(start|end, what, rest of the line) per line of the stub's log, in order."""
    rows = []
    for line in log.read_text().splitlines():
        parts = line.split(" ", 2)
        rows.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return rows


@pytest.fixture
def stub_repo(tmp_path: Path) -> Path:
    """A folder with the real script, a stub ``_env.sh`` and a stub ``python``; the sample's folders, empty."""
    if shutil.which("ps") is None:
        pytest.skip("needs ps")
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "experiments").mkdir()
    shutil.copy(REPO / "experiments" / "real_em_report.sh", root / "experiments" / "real_em_report.sh")
    (root / "scripts" / "_env.sh").write_text(STUB_ENV)
    (root / "stub_bin").mkdir()
    python = root / "stub_bin" / "python"
    python.write_text(STUB_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    for part in ("raw", "mitochondria", "synapses", "membranes"):
        (tmp_path / "sample" / part).mkdir(parents=True)
    return root


def _run(root: Path, out: Path, seeds: str = "0", **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DATA": str(root.parent / "sample"),
        "STUB_LOG": str(root.parent / "stub.log"),
        "ROW_GROUPS": "scsam sam_only mae_only unet,dynunet",
        **env,
    }
    return subprocess.run(
        ["bash", str(root / "experiments" / "real_em_report.sh"), str(out), seeds],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pretraining_runs_beside_the_rows_without_mae_and_before_the_rows_with_it(stub_repo: Path):
    out = stub_repo.parent / "out"
    result = _run(stub_repo, out, STUB_PRETRAIN_SECONDS="6")  # margin for a slow machine
    assert result.returncode == 0, result.stderr + result.stdout
    events = _events(stub_repo.parent / "stub.log")
    index = {(kind, what): i for i, (kind, what, _) in enumerate(events)}
    pretrain_end = index[("end", "pretraining")]
    base = os.nice(0)  # the niceness this test runs at, inherited by the script
    # the groups without ScSAM / MAE* start while the MAE pre-trains, at a lower priority (niceness 10)
    for group in ("sam_only", "unet,dynunet"):
        assert index[("start", f"rows:{group}")] < pretrain_end
        line = events[index[("start", f"rows:{group}")]][2]
        assert int(line.split(" ", 1)[0]) == min(base + 10, 19), line
        assert "mae_checkpoint=" not in line
    # the groups with ScSAM / MAE* start after it has finished, at normal priority, with its encoder
    for group in ("scsam", "mae_only"):
        assert index[("start", f"rows:{group}")] > pretrain_end
        line = events[index[("start", f"rows:{group}")]][2]
        assert int(line.split(" ", 1)[0]) == base, line
        assert f"mae_checkpoint={out}/mae/mae_encoder.pth" in line
    with open(out / "timing.csv", newline="") as handle:
        timing = list(csv.reader(handle))
    assert timing[0] == ["step", "seconds"]
    assert all(len(row) == 2 and int(row[1]) >= 0 for row in timing[1:]), timing
    steps = {row[0] for row in timing[1:]}
    assert {"mae_pretraining", "seed_0/scsam", "seed_0/sam_only", "seed_0/mae_only", "seed_0/unet+dynunet"} <= steps
    assert "total (seeds 0; rows scsam sam_only mae_only unet+dynunet)" in steps
    # step 5: the untrained start of the MAE is exported, then probed beside the pre-trained one
    others = [rest for kind, what, rest in events if kind == "start" and what == "other"]
    export = next(i for i, rest in enumerate(others) if "experiments.mae_untrained" in rest)
    probe = next(i for i, rest in enumerate(others) if "experiments.feature_probe" in rest)
    assert export < probe and f"--out {out}/mae_untrained_seed0.pt" in others[export]
    assert f"--extra-mae MAE (untrained: step 0, seed 0)={out}/mae_untrained_seed0.pt" in others[probe]

    # a second invocation keeps what exists: no pre-training, no rows
    (stub_repo.parent / "stub.log").unlink()
    again = _run(stub_repo, out)
    assert again.returncode == 0, again.stderr
    assert {what for _, what, _ in _events(stub_repo.parent / "stub.log")} <= {"other"}
    assert "pre-training finished: kept" in again.stdout


def test_failed_pretraining_skips_only_the_rows_that_need_it(stub_repo: Path):
    out = stub_repo.parent / "out"
    result = _run(stub_repo, out, STUB_PRETRAIN_FAILS="1", STUB_PRETRAIN_SECONDS="1")
    assert result.returncode == 0, result.stderr
    started = {what for kind, what, _ in _events(stub_repo.parent / "stub.log") if kind == "start"}
    assert {"rows:sam_only", "rows:unet,dynunet"} <= started
    assert not {"rows:scsam", "rows:mae_only"} & started
    assert "the MAE pre-training failed" in result.stdout
    assert "no pre-trained MAE" in (out / "seed_0" / "scsam.log").read_text()
    assert not (out / "seed_0" / "scsam" / "results.csv").exists()


def test_later_seeds_run_at_normal_priority_once_the_pretraining_has_ended(stub_repo: Path):
    out = stub_repo.parent / "out"
    result = _run(stub_repo, out, seeds="0,1", STUB_PRETRAIN_SECONDS="2")
    assert result.returncode == 0, result.stderr + result.stdout
    base = os.nice(0)
    starts = [(what, rest) for kind, what, rest in _events(stub_repo.parent / "stub.log") if kind == "start"]
    seed_1 = [(what, rest) for what, rest in starts if what.startswith("rows:") and " --seed 1 " in rest]
    assert {what for what, _ in seed_1} == {"rows:scsam", "rows:sam_only", "rows:mae_only", "rows:unet,dynunet"}
    assert all(int(rest.split(" ", 1)[0]) == base for _, rest in seed_1), seed_1
    assert sum(what == "pretraining" for what, _ in starts) == 1  # pre-trained once for both seeds
