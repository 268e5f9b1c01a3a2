#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic EM data (about 10 minutes on 2 CPU cores):
# generate data -> precompute embeddings -> train ScSAM with `python -m monai.bundle run training`
# -> evaluate on held-back images -> segment them -> outputs/demo/.
# The demo uses the "tiny" SAM and MAE architectures with RANDOM weights (no pretrained checkpoint can be
# downloaded here): its numbers show the pipeline works, they are not results on real EM.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
OUT=outputs/demo
CONFIGS="['bundle/configs/train.yaml','bundle/configs/demo.yaml']"
EVAL_CONFIGS="['bundle/configs/train.yaml','bundle/configs/evaluate.yaml','bundle/configs/demo.yaml']"
INFER_CONFIGS="['bundle/configs/train.yaml','bundle/configs/inference.yaml','bundle/configs/demo.yaml']"
COMMON=(--meta_file bundle/configs/metadata.json --logging_file bundle/configs/logging.conf)
export PYTHONWARNINGS="ignore"
start=$(date +%s)

echo "[demo] 1/5 synthetic EM data set -> data/synthetic"
python -m scsam_monai.cli.synthetic --out data/synthetic

echo "[demo] 2/5 precompute embeddings (frozen tiny SAM + MAE encoders)"
python -m monai.bundle run precompute --config_file "$CONFIGS" "${COMMON[@]}"

echo "[demo] 3/5 train ScSAM head"
python -m monai.bundle run training --config_file "$CONFIGS" "${COMMON[@]}"

echo "[demo] 4/5 evaluate on the held-back test images"
python -m monai.bundle run evaluating --config_file "$EVAL_CONFIGS" "${COMMON[@]}"

echo "[demo] 5/5 inference on the held-back test images"
python -m monai.bundle run inference --config_file "$INFER_CONFIGS" "${COMMON[@]}"

for f in metrics.json metrics.md learning_curve.png overlay.png; do
  [ -s "$OUT/$f" ] || { echo "[demo] missing output $OUT/$f" >&2; exit 1; }
done
echo
cat "$OUT/metrics.md"
echo
echo "[demo] outputs in $OUT: metrics.json metrics.md learning_curve.png overlay.png predictions/ models/"
echo "[demo] done in $(( $(date +%s) - start )) s (tiny random-weight encoders on synthetic data: not a quality result)"
