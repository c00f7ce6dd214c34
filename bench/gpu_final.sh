#!/usr/bin/env bash
# The final evidence call (device tool): generation and training throughput, the default diagnostic, and the
# default three-phase training job evaluated against the baselines and the CRB.
# Usage: bash bench/gpu_final.sh OUT_DIR   (results in OUT_DIR/results.tgz)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 bench/generate.py --device cuda --batch-sizes 1024 8192 65536 131072 --out "$OUT/generate.json" 2>&1 | tail -16
python3 bench/train.py --device cuda --batches 64 256 1024 4096 8192 --out "$OUT/train_bench.json"
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --out "$OUT/diag" --device cuda 2>&1 | grep -v '‰' | tail -3
/usr/bin/time -f "train wall %e s" python3 -m ris_model train --out "$OUT/train_default" --device cuda 2>&1 \
  | grep -v '‰' | tail -3
timeout 200 python3 -m ris_model evaluate --checkpoint "$OUT/train_default/checkpoints/final.pt" --out "$OUT/eval" \
  --device cuda 2>&1 | grep -v '‰' | tail -3
