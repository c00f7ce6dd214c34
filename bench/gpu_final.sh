#!/usr/bin/env bash
# One device call for a stop's numbers: the CUDA tests of the look pass, throughput now vs a carried
# baseline tree (same machine), a profile of one 4,096 step, the default three-phase training job and its
# evaluation, and the default diagnostic.
# Usage: bash bench/gpu_final.sh OUT_DIR   (carry: baseline_tree; results in OUT_DIR/*/results.tgz)
bash "$(dirname "$0")/gpu_speed_quick.sh" "$1/speed"
bash "$(dirname "$0")/gpu_train_eval.sh" "$1/train"
source "$(dirname "$0")/_gpu_out.sh" "$1/diag"
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
