#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic EM data (minutes on 2 CPU cores):
# generate data -> precompute embeddings -> train ScSAM with `python -m monai.bundle run training`
# (after pre-training a tiny MAE on the unlabelled slices) -> evaluate on held-back images -> segment them -> outputs/demo/.
# The demo uses the "tiny" SAM with RANDOM weights and a tiny MAE it pre-trains itself (no pretrained SAM can be
# downloaded here): its numbers show the pipeline works, they are not results on real EM.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
OUT=outputs/demo
CONFIGS="['bundle/configs/train.yaml','bundle/configs/demo.yaml']"
EVAL_CONFIGS="['bundle/configs/train.yaml','bundle/configs/evaluate.yaml','bundle/configs/demo.yaml']"
INFER_CONFIGS="['bundle/configs/train.yaml','bundle/configs/inference.yaml','bundle/configs/demo.yaml']"
COMMON=(--meta_file bundle/configs/metadata.json --logging_file bundle/configs/logging.conf)
MAE=(--mae_checkpoint "$OUT/models/mae_encoder.pth" --mae_allow_random_weights false)
export PYTHONWARNINGS="ignore"
start=$(date +%s)

echo "[demo] 1/6 synthetic EM data set -> data/synthetic"
python -m scsam_monai.cli.synthetic --out data/synthetic

echo "[demo] 2/6 pre-train the tiny MAE on the unlabelled slices (self-supervised)"
python -m monai.bundle run pretraining \
  --config_file "['bundle/configs/pretrain_mae.yaml','bundle/configs/pretrain_demo.yaml']" "${COMMON[@]}"

echo "[demo] 3/6 precompute embeddings (frozen tiny SAM + the pre-trained tiny MAE)"
python -m monai.bundle run precompute --config_file "$CONFIGS" "${COMMON[@]}" "${MAE[@]}"

echo "[demo] 4/6 train ScSAM head"
python -m monai.bundle run training --config_file "$CONFIGS" "${COMMON[@]}" "${MAE[@]}"

echo "[demo] 5/6 evaluate on the held-back test images"
python -m monai.bundle run evaluating --config_file "$EVAL_CONFIGS" "${COMMON[@]}" "${MAE[@]}"

echo "[demo] 6/6 inference on the held-back test images"
python -m monai.bundle run inference --config_file "$INFER_CONFIGS" "${COMMON[@]}" "${MAE[@]}"

for f in metrics.json metrics.md learning_curve.png overlay.png; do
  [ -s "$OUT/$f" ] || { echo "[demo] missing output $OUT/$f" >&2; exit 1; }
done
echo
cat "$OUT/metrics.md"
echo
echo "[demo] outputs in $OUT: metrics.json metrics.md learning_curve.png overlay.png predictions/ models/ mae_pretraining/"
echo "[demo] done in $(( $(date +%s) - start )) s (tiny random-weight SAM + demo-pretrained tiny MAE on synthetic data: not a quality result)"
