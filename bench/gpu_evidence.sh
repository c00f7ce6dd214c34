#!/usr/bin/env bash
# One combined GPU call (device tool): generation and training benches, then the default diagnostic with
# each architecture. Usage: bash bench/gpu_evidence.sh OUT_DIR
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 bench/generate.py --device cuda --out "$OUT/generate.json" 2>&1 | tail -30
python3 bench/train.py --device cuda --batches 64 256 1024 4096 --out "$OUT/train_unrolled.json"
for arch in unrolled_omp seed_cov; do
  cfg=""; [ "$arch" != unrolled_omp ] && cfg="--config bench/configs/diag_$arch.json"
  /usr/bin/time -f "diag $arch wall %e s" python3 -m ris_model diagnose $cfg --out "$OUT/diag_$arch" --device cuda 2>&1 \
    | grep -v '‰' | tail -4
  rm -rf "$OUT/diag_$arch/checkpoints"
done
