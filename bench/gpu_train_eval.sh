#!/usr/bin/env bash
# A three-phase training job on one GPU (the defaults, or CONFIG_JSON) and its evaluation on the test stream
# against the baselines and the CRB; prints the training and evaluation wall times and the 10-20 dB table.
# Usage: bash bench/gpu_train_eval.sh OUT_DIR [CONFIG_JSON]
# Output: OUT_DIR/results.tgz (train/: the job's outputs but checkpoints; eval/: report.json, report.md, plots) and
#   OUT_DIR/final.pt, the trained checkpoint, for later evaluations
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
config=()
[ -n "${2:-}" ] && config=(--config "$2")
/usr/bin/time -f "train wall %e s" python3 -m ris_model train "${config[@]}" --out "$OUT/train" --device cuda 2>&1 \
  | grep -v '‰' | tail -3
cp "$OUT/train/checkpoints/final.pt" "$DEST/final.pt"
timeout 240 /usr/bin/time -f "evaluate wall %e s" python3 -m ris_model evaluate \
  --checkpoint "$OUT/train/checkpoints/final.pt" --out "$OUT/eval" --device cuda 2>&1 | grep -v '‰' | tail -3
grep -A8 "^### SNR 10" "$OUT/eval/report.md" 2>/dev/null || ls "$OUT/eval"
