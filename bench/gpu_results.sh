#!/usr/bin/env bash
# The GPU rows of docs/RESULTS.md in one run: bench/gpu_throughput.sh (CUDA tests, samples/s at 4,096 and 8,192,
# profile), bench/gpu_train_eval.sh (the default training job and its evaluation), scene generation, samples/s at
# small batches, and the default diagnostic.
# Usage: bash bench/gpu_results.sh OUT_DIR   (./baseline_tree is used as in gpu_throughput.sh)
# Output: OUT_DIR/speed/results.tgz, OUT_DIR/train/results.tgz (+ OUT_DIR/train/final.pt), and
#   OUT_DIR/more/results.tgz (generate.json, train_small.json, diag/)
bash "$(dirname "$0")/gpu_throughput.sh" "$1/speed"
bash "$(dirname "$0")/gpu_train_eval.sh" "$1/train"
source "$(dirname "$0")/_gpu_out.sh" "$1/more"
python3 bench/generate.py --device cuda --batch-sizes 8192 65536 131072 --out "$OUT/generate.json" 2>&1 | tail -6
python3 bench/train.py --device cuda --batches 64 256 1024 --steps 20 --out "$OUT/train_small.json"
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
