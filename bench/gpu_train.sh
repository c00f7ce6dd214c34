#!/usr/bin/env bash
# GPU call for issue 4: training throughput, then the default three-phase training job end to end.
# Usage: bash bench/gpu_train.sh OUT_DIR   (results in OUT_DIR/results.tgz)
set -uo pipefail
DEST="${1:?out dir}"
OUT="$DEST/raw/a/b"
mkdir -p "$OUT"
trap 'tar -C "$OUT" -czf "$DEST/results.tgz" --exclude="*.pt" . 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi -L
python3 bench/train.py --device cuda --batches 64 256 1024 4096 --out "$OUT/train_unrolled.json"
/usr/bin/time -f "train wall %e s" python3 -m ris_model train --out "$OUT/train_default" --device cuda 2>&1 \
  | grep -v '‰' | tail -30
