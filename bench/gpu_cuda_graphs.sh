#!/usr/bin/env bash
# What CUDA graphs buy: bench/gpu_throughput.sh first, then training samples/s at 4,096 with CUDA graphs off, and
# the default diagnostic's wall time.
# Usage: bash bench/gpu_cuda_graphs.sh OUT_DIR   (./baseline_tree is used as in gpu_throughput.sh)
# Output: OUT_DIR/throughput/results.tgz (gpu_throughput.sh) and OUT_DIR/results.tgz (train_new_nographs.json,
#   diag/: the diagnostic's report and metrics)
bash "$(dirname "$0")/gpu_throughput.sh" "$1/throughput"
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 bench/train.py --device cuda --batches 4096 --steps 20 --model cuda_graphs=false --out "$OUT/train_new_nographs.json"
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
