#!/usr/bin/env bash
# Training throughput now vs a baseline tree, the CUDA tests of the look pass and generation, and a profile
# with the host-sync count, the eager step's time by region (device tool; gpu_speed.sh and gpu_final.sh run it first).
# Usage: bash bench/gpu_speed_quick.sh OUT_DIR   (results in OUT_DIR/results.tgz; carry: baseline_tree)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/ris_model/test_unrolled.py tests/ris_model/test_physics.py \
  tests/ris_model/test_scenes.py tests/ris_model/test_spectral.py tests/ris_model/accel/test_graphed_step.py tests/ris_model/accel/test_kernels.py 2>&1 | tail -15
python3 bench/train.py --device cuda --batches 4096 8192 --steps 20 --out "$OUT/train_new.json"
if [ -d baseline_tree ]; then
  (cd baseline_tree && PYTHONPATH="$PWD:${PYTHONPATH:-}" python3 bench/train.py --device cuda --batches 4096 8192 \
    --steps 20 --out "$OUT/train_baseline.json")
fi
python3 bench/profile_step.py --batch 4096 --out "$OUT/profile_new_b4096.txt" | head -60
python3 bench/step_regions.py --batch 4096 --out "$OUT/step_regions_b4096.json"
