"""The GPUs a worker may use, counted without initialising CUDA (no torch): CUDA_VISIBLE_DEVICES, else
`nvidia-smi -L`. Used by `ris-jobs worker` (one Celery worker per GPU) and by the worker's capacity announcement.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus() -> list[str]:
    """GPU ids a worker may use: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`; [] when there is none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")  # device visibility, not a service setting (B5)
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]
