"""The API, the reaper and the CLI run from the base install (no `[worker]` extra): their import closure never
reaches torch or the science stack. Checked in a fresh interpreter, so nothing the test session imported counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Modules of the `[worker]` extra and the science package; none may load in the API process.
WORKER_ONLY = ("torch", "numpy", "scipy", "matplotlib", "tqdm", "ris_model", "triton")

PROGRAM = f"""
import sys
import server.main, worker.cli, worker.reaper
server.main.create_app()
loaded = sorted(m for m in {WORKER_ONLY!r} if m in sys.modules)
assert not loaded, f"the API imports {{loaded}}"
print("ok")
"""


def test_api_app_reaper_and_cli_import_no_torch(tmp_path: Path) -> None:
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path / 'api.sqlite'}",
        "ARTIFACT_DIR": str(tmp_path / "artifacts"), "API_KEYS": "",
    }
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
