#!/usr/bin/env bash
# The default three-phase training job, then its evaluation (device tool).
# Usage: bash bench/gpu_train_eval.sh OUT_DIR   (results in OUT_DIR/results.tgz)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
/usr/bin/time -f "train wall %e s" python3 -m ris_model train --out "$OUT/train_default" --device cuda 2>&1 \
  | grep -v '‰' | tail -3
timeout 200 python3 -m ris_model evaluate --checkpoint "$OUT/train_default/checkpoints/final.pt" --out "$OUT/eval" \
  --device cuda 2>&1 | grep -v '‰' | tail -3
