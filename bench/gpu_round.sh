#!/usr/bin/env bash
# GPU call: profile of one training step, the default diagnostic (issue 4/5 evidence) and the default
# three-phase training job (issue 4). Usage: bash bench/gpu_round.sh OUT_DIR   (results in OUT_DIR/results.tgz)
set -uo pipefail
DEST="${1:?out dir}"
OUT="$DEST/raw/a/b"
mkdir -p "$OUT"
trap 'tar -C "$OUT" -czf "$DEST/results.tgz" --exclude="*.pt" . 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi -L
python3 bench/profile_step.py --out "$OUT/profile.txt" > /dev/null 2>&1
head -30 "$OUT/profile.txt" | cut -c1-60,100-200
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --out "$OUT/diag" --device cuda 2>&1 | grep -v '‰' | tail -3
/usr/bin/time -f "train wall %e s" python3 -m ris_model train --out "$OUT/train_default" --device cuda 2>&1 \
  | grep -v '‰' | tail -3
timeout 240 python3 -m ris_model evaluate --checkpoint "$OUT/train_default/checkpoints/final.pt" --out "$OUT/eval" --device cuda 2>&1 | tail -15
