# Sourced by scripts/test and scripts/run-service: create .venv and install the project if needed.
# torch is pinned first to the CPU wheel that pip finds on these machines (2.13.0); where torch is already
# importable in the venv, nothing is downloaded again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RIS_JOBS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing torch (CPU build)" >&2
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q "torch>=2.4,<2.14"
fi
stamp="$VENV/.ris-jobs-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "installing ris-jobs and its dependencies" >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[worker,postgres,dev]" 2>&1 | grep -v -E "^(WARNING|  |$)" >&2 || true
  "$VENV/bin/python" -c "import api_schemas, ris_model, fastapi, celery, sqlalchemy" 
  touch "$stamp"
fi
