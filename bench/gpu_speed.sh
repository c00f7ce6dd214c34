#!/usr/bin/env bash
# gpu_speed_quick.sh (CUDA tests, throughput now vs a carried baseline tree, profile), then the throughput
# without CUDA graphs and the default diagnostic (device tool). A baseline tree is exported beside the repo first:
#   git archive <commit> ris_model api_schemas bench | tar -x -C baseline_tree   (carry: baseline_tree)
# Usage: bash bench/gpu_speed.sh OUT_DIR   (results in OUT_DIR/quick/results.tgz and OUT_DIR/results.tgz)
bash "$(dirname "$0")/gpu_speed_quick.sh" "$1/quick"
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 bench/train.py --device cuda --batches 4096 --steps 20 --model cuda_graphs=false --out "$OUT/train_new_nographs.json"
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
