#!/usr/bin/env bash
# The architectures side by side on one GPU: scene generation, training samples/s of the default model at 64…4,096,
# and the default diagnostic with each architecture (unrolled_omp, and seed_cov through
# bench/configs/diag_seed_cov.json).
# Usage: bash bench/gpu_architectures.sh OUT_DIR
# Output (in OUT_DIR/results.tgz): generate.json, train_unrolled.json, diag_<architecture>/ (report, metrics)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 bench/generate.py --device cuda --out "$OUT/generate.json" 2>&1 | tail -30
python3 bench/train.py --device cuda --batches 64 256 1024 4096 --out "$OUT/train_unrolled.json"
for arch in unrolled_omp seed_cov; do
  cfg=""; [ "$arch" != unrolled_omp ] && cfg="--config bench/configs/diag_$arch.json"
  /usr/bin/time -f "diag $arch wall %e s" python3 -m ris_model diagnose $cfg --out "$OUT/diag_$arch" --device cuda 2>&1 \
    | grep -v '‰' | tail -4
  rm -rf "$OUT/diag_$arch/checkpoints"
done
