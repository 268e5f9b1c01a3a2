#!/usr/bin/env bash
# Checks that need a CUDA GPU (the test suite runs on CPUs only): tiny training with AMP on the GPU, a
# one-rank NCCL run of the multi-GPU overlay, segmenting a stack, the SAM encoder's GPU paths (fused attention
# kernels, torch.compile, CUDA graphs) against segment-anything's encoder, and the full-profile benchmark.
# Usage: bash scripts/gpu_check.sh OUT_DIR   (the project installed, e.g. by scripts/test.sh; runs from the repo root)
# Writes OUT_DIR/gpu_check.log, sam_check.json, benchmark.json/.md, learning_curve.png.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
work=$(mktemp -d)
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$out" && cd "$out" && pwd)  # absolute: the checks run from the repository root
cd "$root"  # the bench (python -m benchmarks...) is imported from the repository root, not installed
cfg="$root/bundle/configs"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, time and record one check
  local name=$1; shift
  echo "=== $name" | tee -a "$log"
  local t0=$SECONDS
  if "$@" >>"$log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)" | tee -a "$log"
  else echo "FAIL $name ($((SECONDS - t0)) s)" | tee -a "$log"; status=1; fi
}
bundle() {  # bundle RUN_ID CONFIGS... -- OVERRIDES...
  local id=$1; shift
  python -m monai.bundle run "$id" --meta_file "$cfg/metadata.json" --logging_file "$cfg/logging.conf" "$@"
}

step environment python -c "import torch, monai, segment_anything, timm; print(torch.__version__, monai.__version__, \
torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported()); assert torch.cuda.is_available()"
step synthetic_data python -c "from scsam_monai.synthetic import write_synthetic_dataset as w; \
w('$work/data', num_train=16, num_val=4, num_test=4, size=256, seed=3)"
# train.yaml turns AMP on when CUDA is there; the head trains in fp16 autocast with MONAI's GradScaler
step amp_training bundle training --config_file "['$cfg/train.yaml','$cfg/demo.yaml']" \
  --dataset_dir "$work/data" --output_dir "$work/amp" --train#trainer#max_epochs 8
step amp_training_improves python - "$work/amp/learning_curve.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); print("val Dice by epoch", [round(v, 3) for v in c["val_metric"]])
assert max(c["val_metric"][1:]) > c["val_metric"][0] + 0.05, "AMP training did not improve validation Dice"
EOF
cp "$work/amp/learning_curve.png" "$out/" 2>/dev/null
step ddp_nccl_one_rank torchrun --standalone --nproc_per_node 1 -m monai.bundle run training \
  --meta_file "$cfg/metadata.json" --logging_file "$cfg/logging.conf" \
  --config_file "['$cfg/train.yaml','$cfg/demo.yaml','$cfg/multi_gpu_train.yaml']" \
  --dataset_dir "$work/data" --output_dir "$work/ddp" --train#trainer#max_epochs 2
step inference_on_gpu bundle inference --config_file "['$cfg/train.yaml','$cfg/inference.yaml','$cfg/demo.yaml']" \
  --dataset_dir "$work/data" --output_dir "$work/amp" --input "$work/data/images"
step inference_wrote_labels test -s "$work/amp/predictions/predictions.json"
# the SAM encoder's fast paths against segment-anything's float32 encoder (same weights): fused attention in fp32
# and bf16, the memory-efficient and math SDPA kernels forced, torch.compile and CUDA graphs (reduce-overhead);
# fails when a tolerance is exceeded; writes sam_check.json with times and fractions of the bf16 matmul rate
step sam_fast_paths python -m benchmarks.sam_check --out "$out/sam_check" --batch 8 --repeats 5
cp "$out/sam_check/sam_check.json" "$out/" 2>/dev/null
# MAE pre-training of mae_vit_512 on the shared ssTEM sample's training sections (issue: below 0.8 within 5 GPU
# minutes); skipped when ../shared/data is absent; its loss curve and reconstructions land in OUT_DIR/mae_sstem
if [ -d "$root/../shared/data/drosophila-vnc-sstem/raw" ]; then
  step mae_sstem_vit512 bundle pretraining \
    --config_file "['$cfg/pretrain_mae.yaml','$root/experiments/configs/pretrain_sstem.yaml']" --mae_arch mae_vit_512 \
    --batch_size 256 --max_steps 3500 --learning_rate 0.001 --warmup_steps 500 --steps_per_epoch 100 \
    --png_interval 5 --num_workers 4 --output_dir "$out/mae_sstem"
fi
step benchmark_full python "$root/scripts/benchmark.py" --profile full --out "$out/benchmark"
cp "$out/benchmark/benchmark.json" "$out/benchmark/benchmark.md" "$out/" 2>/dev/null
grep -E "^(PASS|FAIL)" "$log"
exit $status
