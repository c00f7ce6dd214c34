#!/usr/bin/env bash
# Training throughput on one GPU: the CUDA tests of the look pass, physics, scenes and spectral tools; training
# samples/s at batches 4,096 and 8,192 (and the same for a baseline tree, when ./baseline_tree exists, for a
# before/after on one machine); a torch.profiler table of one 4,096 step with its host-sync count; the eager
# step's time by region.
# Usage: bash bench/gpu_throughput.sh OUT_DIR
#   A baseline tree: git archive <commit> ris_model api_schemas bench | tar -x -C baseline_tree
# Output (in OUT_DIR/results.tgz): train_new.json, train_baseline.json, profile_new_b4096.txt,
#   step_regions_b4096.json
source "$(dirname "$0")/_gpu_out.sh" "${1:-}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/ris_model \
  -k "unrolled or physics or scenes or spectral or graphed_step or kernels" 2>&1 | tail -15
python3 bench/train.py --device cuda --batches 4096 8192 --steps 20 --out "$OUT/train_new.json"
if [ -d baseline_tree ]; then
  (cd baseline_tree && PYTHONPATH="$PWD:${PYTHONPATH:-}" python3 bench/train.py --device cuda --batches 4096 8192 \
    --steps 20 --out "$OUT/train_baseline.json")
fi
python3 bench/profile_step.py --batch 4096 --out "$OUT/profile_new_b4096.txt" | head -60
python3 bench/step_regions.py --batch 4096 --out "$OUT/step_regions_b4096.json"
