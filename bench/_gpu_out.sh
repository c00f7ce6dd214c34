# Output folder of the bench/gpu_*.sh scripts (sourced, not run): the raw outputs go under OUT = DEST/raw/a/b,
# and on exit everything in OUT but checkpoints (*.pt) is packed into DEST/results.tgz, one file to copy back
# from a remote GPU machine. Also prints the GPUs and puts the repository on PYTHONPATH.
# Usage inside a script: source "$(dirname "$0")/_gpu_out.sh" "$1"
set -uo pipefail
DEST="${1:?out dir}"
OUT="$DEST/raw/a/b"
mkdir -p "$OUT"
trap 'tar -C "$OUT" -czf "$DEST/results.tgz" --exclude="*.pt" . 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi -L
