# Sourced by the bench/gpu_*.sh scripts (device tool calls): OUT is a folder deeper than the device tool
# returns, and on exit everything in it but checkpoints is packed into DEST/results.tgz, the one file that
# comes back. Usage inside a script: source "$(dirname "$0")/_gpu_out.sh" "$1"
set -uo pipefail
DEST="${1:?out dir}"
OUT="$DEST/raw/a/b"
mkdir -p "$OUT"
trap 'tar -C "$OUT" -czf "$DEST/results.tgz" --exclude="*.pt" . 2>/dev/null' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi -L
