#!/usr/bin/env bash
# The final evidence call (device tool): the CUDA tests of the look pass, training throughput now vs a
# carried baseline tree (same machine) and a profile of one 4,096 step (gpu_speed_quick.sh), generation and
# small-batch throughput, the default three-phase training job and its evaluation against the baselines and
# the CRB (gpu_train_eval.sh), and the default diagnostic.
# Usage: bash bench/gpu_final.sh OUT_DIR   (carry: baseline_tree; results in OUT_DIR/*/results.tgz)
bash "$(dirname "$0")/gpu_speed_quick.sh" "$1/speed"
bash "$(dirname "$0")/gpu_train_eval.sh" "$1/train"
source "$(dirname "$0")/_gpu_out.sh" "$1/more"
python3 bench/generate.py --device cuda --batch-sizes 8192 65536 131072 --out "$OUT/generate.json" 2>&1 | tail -6
python3 bench/train.py --device cuda --batches 64 256 1024 --steps 20 --out "$OUT/train_small.json"
/usr/bin/time -f "diagnose wall %e s" python3 -m ris_model diagnose --device cuda --out "$OUT/diag" 2>&1 \
  | grep -v '‰' | tail -4
