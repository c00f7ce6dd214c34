#!/usr/bin/env bash
# Training throughput now vs a baseline tree, the look pass's CUDA-graph test, a profile with the host-sync
# count, and the default diagnostic (device tool). A baseline tree is exported beside the repo first:
#   git archive <commit> ris_model api_schemas bench | tar -x -C baseline_tree   (carry: baseline_tree)
# Usage: bash bench/gpu_speed.sh OUT_DIR   (results in OUT_DIR/results.tgz)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 -m pytest -q -p no:cacheprovider tests/ris_model/test_unrolled.py tests/ris_model/test_physics.py 2>&1 | tail -3
python3 bench/train.py --device cuda --batches 1024 4096 8192 --steps 20 --out "$OUT/train_new.json"
python3 bench/train.py --device cuda --batches 4096 --steps 20 --model cuda_graphs=false --out "$OUT/train_new_nographs.json"
if [ -d baseline_tree ]; then
  (cd baseline_tree && PYTHONPATH="$PWD:${PYTHONPATH:-}" python3 bench/train.py --device cuda --batches 4096 8192 \
    --steps 20 --out "$OUT/train_baseline.json")
fi
python3 bench/profile_step.py --batch 4096 --out "$OUT/profile_new_b4096.txt" | head -45
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
