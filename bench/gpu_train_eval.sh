#!/usr/bin/env bash
# Throughput of the joint step (now, and a baseline tree if carried), then the default three-phase training
# job and its evaluation (device tool).
# Usage: bash bench/gpu_train_eval.sh OUT_DIR   (results in OUT_DIR/results.tgz)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 bench/train.py --device cuda --batches 64 256 1024 4096 8192 --steps 20 --out "$OUT/train_bench.json"
if [ -d baseline_tree ]; then
  (cd baseline_tree && PYTHONPATH="$PWD:${PYTHONPATH:-}" python3 bench/train.py --device cuda --batches 4096 8192 \
    --steps 20 --out "$OUT/train_bench_baseline.json")
fi
/usr/bin/time -f "train wall %e s" python3 -m ris_model train --out "$OUT/train_default" --device cuda 2>&1 \
  | grep -v '‰' | tail -3
timeout 200 python3 -m ris_model evaluate --checkpoint "$OUT/train_default/checkpoints/final.pt" --out "$OUT/eval" \
  --device cuda 2>&1 | grep -v '‰' | tail -3
