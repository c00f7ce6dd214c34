#!/usr/bin/env bash
# The fused look-pass routes on the GPU (device tool): CUDA tests of the kernels, the per-use microbench,
# training throughput with every fused route, with the routes in $ROUTES_OFF (default: refine) on torch, and the
# baseline tree; then a profile. Each stage has a time limit. Usage: bash bench/gpu_routes.sh OUT_DIR
# (carry: baseline_tree; set SKIP_SLOW=1 to leave out the routes-off run and the profile)
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/ris_model/accel/test_kernels.py 2>&1 | tail -8
timeout 180 python3 bench/grouped_power.py --out "$OUT/grouped_power.json"
timeout 240 python3 bench/train.py --device cuda --batches 64 256 1024 4096 8192 --steps 20 --out "$OUT/train_fused.json"
if [ -d baseline_tree ]; then
  (cd baseline_tree && PYTHONPATH="$PWD:${PYTHONPATH:-}" timeout 120 python3 bench/train.py --device cuda \
    --batches 4096 --steps 20 --out "$OUT/train_baseline.json")
fi
[ -n "${SKIP_SLOW:-}" ] && exit 0
timeout 120 python3 bench/train.py --device cuda --batches 4096 --steps 20 --torch-route ${ROUTES_OFF:-refine} \
  --out "$OUT/train_routes_off.json"
timeout 120 python3 bench/profile_step.py --batch 4096 --out "$OUT/profile_b4096.txt" | head -45
