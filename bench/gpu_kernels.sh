#!/usr/bin/env bash
# The look pass's Triton kernels on one GPU: their CUDA tests; each fused product against its torch route
# (bench/grouped_power.py); training samples/s at 64…8,192 with every fused route; at 4,096 for a baseline tree
# (when ./baseline_tree exists); then, unless SKIP_SLOW=1, samples/s with the routes in ROUTES_OFF (default:
# refine) on torch and a profile of one 4,096 step. Each stage has a time limit.
# Usage: [SKIP_SLOW=1] [ROUTES_OFF="atom_norms image"] bash bench/gpu_kernels.sh OUT_DIR
# Output (in OUT_DIR/results.tgz): grouped_power.json, train_fused.json, train_baseline.json,
#   train_routes_off.json, profile_b4096.txt
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/ris_model -k kernels 2>&1 | tail -8
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
