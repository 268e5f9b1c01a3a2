#!/usr/bin/env bash
# The real-EM report (experiments/results/real_em.md) with one command, from any folder:
#   bash experiments/real_em_report.sh OUT_DIR [SEEDS]        e.g. bash experiments/real_em_report.sh outputs/real_em 0,1,2
# On the ssTEM sample of ../shared/data/drosophila-vnc-sstem (20 sections, 1024 x 1024) it
#   1. prepares the sample with scsam-prepare into OUT/data: classes mitochondria, synapses, membranes (label values
#      1..3), sections 0-11 train, 12-14 validate, 16-19 test (15 is a gap: neighbouring sections look alike),
#      downscaled 4x to 256 x 256, the canvas of the small profile;
#   2. pre-trains the tiny MAE on the prepared training + validation sections only (pretrain_real_em.yaml: the
#      datalist's training and validation images as the experiments see them, never a test section) into OUT/mae
#      (encoder: OUT/mae/mae_encoder.pth, loss curve: OUT/mae/mae_loss.png, log: OUT/mae_pretraining.log), beside
#      the row groups that do not embed with it, which start at a lower CPU priority (niceness 10, kept to their
#      end: a process cannot raise its priority again); the groups with ScSAM or MAE* start when it has finished;
#   3. runs scripts/run_experiments.py --profile small for the rows ScSAM, SAM*, MAE*, MAE* (random MAE), UNet and
#      DynUNet once per seed, one process per row group into OUT/seed_<k>/<group> (results.csv/.md/.json,
#      learning_curves.png, qualitative.png, runs/<method>/row.json and training_budget.json);
#   4. aggregates the seeds: mean and standard deviation over seeds of every score per row into OUT/summary.csv,
#      OUT/summary.json and OUT/summary.md, with the difference MAE* - MAE* (random MAE) of the mean Dice per seed;
#   5. probes the frozen features linearly (experiments.feature_probe) into OUT/feature_probe: the
#      pre-trained MAE, an untrained MAE (step 0, experiments.mae_untrained), its random twins, the random SAM.
# Wall seconds of each step it runs are appended to OUT/timing.csv (the whole of seed 0 on 2 idle cores: 27.6 min).
# SEEDS: comma-separated seeds (default 0,1,2). Steps whose outputs exist are skipped, so a run can be resumed or
# extended with more seeds. Environment: DATA (the sample, default ../shared/data/drosophila-vnc-sstem from the
# repository root), ROW_GROUPS (default "scsam sam_only mae_only mae_only_random unet,dynunet": the rows, one
# run_experiments process per space-separated group, run side by side; drop a row to save time). One thread per
# process unless OMP_NUM_THREADS is set.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash experiments/real_em_report.sh OUT_DIR [SEEDS, default 0,1,2]" >&2
  exit 2
fi
OUT_ARG="$1"
SEEDS="${2:-0,1,2}"
CALLER="$(pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_env.sh"  # cd to the repository root, .venv/bin on PATH
case "$OUT_ARG" in /*) OUT="$OUT_ARG" ;; *) OUT="$CALLER/$OUT_ARG" ;; esac
DATA="${DATA:-../shared/data/drosophila-vnc-sstem}"
ROW_GROUPS="${ROW_GROUPS:-scsam sam_only mae_only mae_only_random unet,dynunet}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
for part in raw mitochondria synapses membranes; do
  if [ ! -d "$DATA/$part" ]; then
    echo "real_em_report: $DATA/$part not found (the ssTEM sample; set DATA=...)" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
[ -f "$OUT/timing.csv" ] || echo "step,seconds" > "$OUT/timing.csv"  # wall seconds of each step run, appended
log() { echo "[real_em_report $(date +%H:%M:%S)] $*"; }

if [ ! -f "$OUT/data/datalist.json" ]; then
  log "1/5 preparing $DATA into $OUT/data"
  python scripts/prepare_data.py --image "$DATA/raw" \
    --mask "mitochondria=$DATA/mitochondria" --mask "synapses=$DATA/synapses" --mask "membranes=$DATA/membranes" \
    --train-slices 0:12 --val-slices 12:15 --test-slices 16:20 --downscale 4 --out "$OUT/data" --quiet
else
  log "1/5 $OUT/data/datalist.json exists: kept"
fi

# only the rows ScSAM and MAE* embed with the pre-trained MAE: other row groups neither wait for it nor read it
embeds_with_mae() {  # ROWS (comma- or space-separated): whether one of them is ScSAM or MAE*
  local row
  for row in ${1//,/ }; do
    case "$row" in scsam|mae_only) return 0 ;; esac
  done
  return 1
}
# Pre-training runs beside the row groups that do not embed with it (SAM*, MAE* (random MAE), UNet, DynUNet), which
# start at a lower CPU priority (and keep it to their end: an unprivileged process cannot raise its priority again):
# it is on the critical path of the groups with ScSAM or MAE*, which start when it has finished.
mae_final="$OUT/mae/checkpoints/mae_checkpoint_final.pt"
pretrain_pid=""
if ! embeds_with_mae "$ROW_GROUPS"; then
  log "2/5 no row of ROW_GROUPS embeds with the pre-trained MAE: pre-training skipped"
elif [ ! -f "$mae_final" ]; then
  log "2/5 pre-training the tiny MAE on the prepared training + validation sections into $OUT/mae (log: $OUT/mae_pretraining.log)"
  (
    t0=$SECONDS
    python -m monai.bundle run pretraining --meta_file bundle/configs/metadata.json \
      --config_file "['bundle/configs/pretrain_mae.yaml','experiments/configs/pretrain_real_em.yaml']" \
      --logging_file bundle/configs/logging.conf \
      --dataset_dir "$OUT/data" --output_dir "$OUT/mae" --seed 0 > "$OUT/mae_pretraining.log" 2>&1
    echo "mae_pretraining,$((SECONDS - t0))" >> "$OUT/timing.csv"
  ) &
  pretrain_pid=$!
else
  log "2/5 $OUT/mae pre-training finished: kept"
fi

wait_for_mae() {  # in a row group's subshell: until the pre-training of this invocation has ended; fails without it
  if [ -n "$pretrain_pid" ]; then
    while kill -0 "$pretrain_pid" 2>/dev/null; do sleep 5; done
  fi
  [ -f "$mae_final" ]
}

run_group() {  # SEED GROUP RUN_DIR: one run_experiments process (waits for the MAE first if the group embeds with it)
  local seed="$1" group="$2" run="$3" t0=$SECONDS
  local mae=() priority=()
  if embeds_with_mae "$group"; then
    if ! wait_for_mae; then
      echo "real_em_report: no pre-trained MAE at $mae_final (see $OUT/mae_pretraining.log): rows $group not run" >&2
      return 1
    fi
    mae=(--override "mae_checkpoint=$OUT/mae/mae_encoder.pth")
  elif [ -n "$pretrain_pid" ] && kill -0 "$pretrain_pid" 2>/dev/null; then  # only while the pre-training runs
    priority=(nice -n 10)
  fi
  local status=0
  "${priority[@]}" python scripts/run_experiments.py --datalist "$OUT/data/datalist.json" --profile small \
    --seed "$seed" --methods "$group" --out "$run" --override image_normalization=prepared "${mae[@]}" || status=$?
  echo "seed_$seed/${group//,/+},$((SECONDS - t0))" >> "$OUT/timing.csv"
  return $status
}

IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
# One run_experiments process per row group, side by side: on a shared 2-core machine the rows would otherwise run
# one after the other for well over an hour (an ScSAM-type row alone takes ~8 minutes at the small budget).
for seed in "${SEED_LIST[@]}"; do
  pids=()
  for group in $ROW_GROUPS; do
    run="$OUT/seed_$seed/${group//,/+}"
    if [ -f "$run/results.csv" ]; then
      log "3/5 seed $seed, rows $group: $run/results.csv exists: kept"
      continue
    fi
    log "3/5 seed $seed, rows $group into $run (log: $run.log)"
    mkdir -p "$OUT/seed_$seed"
    run_group "$seed" "$group" "$run" > "$run.log" 2>&1 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || log "a row group of seed $seed failed or had a failed row: see its log and results.md"
  done
done
if [ -n "$pretrain_pid" ] && ! wait "$pretrain_pid"; then
  log "the MAE pre-training failed (see $OUT/mae_pretraining.log): the rows ScSAM and MAE* did not run"
fi

log "4/5 aggregating the seeds into $OUT/summary.{csv,json,md}"
python -m experiments.seed_summary "$OUT" "${SEED_LIST[@]}" --title "Real EM (ssTEM sample), small profile"

if [ -f "$OUT/mae/mae_encoder.pth" ]; then
  log "5/5 linear probes of the frozen features into $OUT/feature_probe"
  # beside the pre-trained MAE and its random twins: an untrained MAE of the same construction (step 0, seed 0)
  python -m experiments.mae_untrained --arch tiny --seed 0 --out "$OUT/mae_untrained_seed0.pt" > /dev/null
  python -m experiments.feature_probe --datalist "$OUT/data/datalist.json" \
    --mae-checkpoint "$OUT/mae/mae_encoder.pth" --out "$OUT/feature_probe" \
    --extra-mae "MAE (untrained: step 0, seed 0)=$OUT/mae_untrained_seed0.pt"
else
  log "5/5 no pre-trained MAE in $OUT/mae: linear probes skipped"
fi
# commas inside a step's name would split the CSV row: seeds and row groups are joined with "+" there
echo "total (seeds ${SEEDS//,/+}; rows ${ROW_GROUPS//,/+}),$SECONDS" >> "$OUT/timing.csv"
log "done in $((SECONDS / 60)) min $((SECONDS % 60)) s (seconds per step of this invocation: $OUT/timing.csv)"
