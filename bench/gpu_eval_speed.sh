#!/usr/bin/env bash
# Throughput now vs a baseline tree with the CUDA tests and a profile (gpu_speed_quick.sh), the evaluation
# of a carried checkpoint with this tree's estimators, and the default diagnostic (device tool).
# Usage: bash bench/gpu_eval_speed.sh OUT_DIR [CHECKPOINT]   (results in OUT_DIR/results.tgz)
bash "$(dirname "$0")/gpu_speed_quick.sh" "$1/speed"
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
if [ -n "${2:-}" ]; then
  timeout 240 /usr/bin/time -f "evaluate wall %e s" python3 -m ris_model evaluate --checkpoint "$2" \
    --out "$OUT/eval" --device cuda 2>&1 | grep -v '‰' | tail -3
  grep -A8 "^### SNR 10" "$OUT/eval/report.md" 2>/dev/null
fi
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
