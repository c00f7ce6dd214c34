#!/usr/bin/env bash
# The default three-phase training job and its evaluation (device tool); the final checkpoint is copied to
# OUT_DIR/final.pt so that later calls can evaluate it again. Throughput: bench/gpu_speed_quick.sh.
# Usage: bash bench/gpu_train_eval.sh OUT_DIR   (results in OUT_DIR/results.tgz)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
/usr/bin/time -f "train wall %e s" python3 -m ris_model train --out "$OUT/train_default" --device cuda 2>&1 \
  | grep -v '‰' | tail -3
cp "$OUT/train_default/checkpoints/final.pt" "$DEST/final.pt"
timeout 240 /usr/bin/time -f "evaluate wall %e s" python3 -m ris_model evaluate \
  --checkpoint "$OUT/train_default/checkpoints/final.pt" --out "$OUT/eval" --device cuda 2>&1 | grep -v '‰' | tail -3
grep -A8 "^### SNR 10" "$OUT/eval/report.md" 2>/dev/null || ls "$OUT/eval"
