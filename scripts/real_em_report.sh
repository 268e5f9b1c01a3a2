#!/usr/bin/env bash
# The real-EM report (docs/results_real_em.md) with one command, from any folder:
#   bash scripts/real_em_report.sh OUT_DIR [SEEDS]        e.g. bash scripts/real_em_report.sh outputs/real_em 0,1,2
# On the ssTEM sample of ../shared/data/drosophila-vnc-sstem (20 sections, 1024 x 1024) it
#   1. prepares the sample with scsam-prepare into OUT/data: classes mitochondria, synapses, membranes (label values
#      1..3), sections 0-11 train, 12-14 validate, 16-19 test (15 is a gap: neighbouring sections look alike),
#      downscaled 4x to 256 x 256, the canvas of the small profile;
#   2. pre-trains the tiny MAE on the prepared training + validation sections only (pretrain_real_em.yaml: the
#      datalist's training and validation images as the experiments see them, never a test section) into OUT/mae
#      (encoder: OUT/mae/mae_encoder.pt, loss curve: OUT/mae/mae_loss.png);
#   3. runs scripts/run_experiments.py --profile small for the rows ScSAM, SAM*, MAE*, MAE* (random MAE), UNet and
#      DynUNet once per seed, one process per row group into OUT/seed_<k>/<group> (results.csv/.md/.json,
#      learning_curves.png, qualitative.png, runs/<method>/row.json and training_budget.json);
#   4. aggregates the seeds: mean and standard deviation over seeds of every score per row into OUT/summary.csv,
#      OUT/summary.json and OUT/summary.md, with the difference MAE* - MAE* (random MAE) of the mean Dice per seed.
# SEEDS: comma-separated seeds (default 0,1,2). Steps whose outputs exist are skipped, so a run can be resumed or
# extended with more seeds. Environment: DATA (the sample, default ../shared/data/drosophila-vnc-sstem from the
# repository root), ROW_GROUPS (default "scsam sam_only mae_only mae_only_random unet,dynunet": the rows, one
# run_experiments process per space-separated group, run side by side; drop a row to save time). One thread per
# process unless OMP_NUM_THREADS is set.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash scripts/real_em_report.sh OUT_DIR [SEEDS, default 0,1,2]" >&2
  exit 2
fi
OUT_ARG="$1"
SEEDS="${2:-0,1,2}"
CALLER="$(pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # cd to the repository root, .venv/bin on PATH
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
if ! embeds_with_mae "$ROW_GROUPS"; then
  log "2/5 no row of ROW_GROUPS embeds with the pre-trained MAE: pre-training skipped"
elif [ ! -f "$OUT/mae/checkpoints/mae_checkpoint_final.pt" ]; then
  log "2/5 pre-training the tiny MAE on the prepared training + validation sections into $OUT/mae"
  python -m monai.bundle run pretraining --meta_file bundle/configs/metadata.json \
    --config_file "['bundle/configs/pretrain_mae.yaml','bundle/configs/pretrain_real_em.yaml']" \
    --logging_file bundle/configs/logging.conf \
    --dataset_dir "$OUT/data" --output_dir "$OUT/mae" --seed 0
else
  log "2/5 $OUT/mae pre-training finished: kept"
fi

IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
# One run_experiments process per row group, side by side: on a shared 2-core machine the rows would otherwise run
# one after the other for well over an hour (an ScSAM-type row alone takes ~15 minutes at the small budget).
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
    mae=()
    if embeds_with_mae "$group"; then mae=(--override "mae_checkpoint=$OUT/mae/mae_encoder.pt"); fi
    python scripts/run_experiments.py --datalist "$OUT/data/datalist.json" --profile small --seed "$seed" \
      --methods "$group" --out "$run" --override image_normalization=prepared "${mae[@]}" > "$run.log" 2>&1 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || log "a row group of seed $seed failed or had a failed row: see its log and results.md"
  done
done

log "4/5 aggregating the seeds into $OUT/summary.{csv,json,md}"
python -m scsam_monai.experiments.seeds "$OUT" "${SEED_LIST[@]}" --title "Real EM (ssTEM sample), small profile"

if [ -f "$OUT/mae/mae_encoder.pt" ]; then
  log "5/5 linear probes of the frozen features into $OUT/feature_probe"
  python -m scsam_monai.experiments.feature_probe --datalist "$OUT/data/datalist.json" \
    --mae-checkpoint "$OUT/mae/mae_encoder.pt" --out "$OUT/feature_probe"
else
  log "5/5 no pre-trained MAE in $OUT/mae: linear probes skipped"
fi
