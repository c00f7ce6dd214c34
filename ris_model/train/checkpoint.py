"""The only checkpoint writer and reader (SCIENCE.md, "The trainer").

A checkpoint is a dict of tensors and plain types under constant keys, loadable with
`torch.load(path, weights_only=True)`. Writes go to a temp file in the same directory, are fsynced and
renamed with os.replace, so a reader never sees a partial file; the sha256 is computed from the bytes written.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ris_model.errors import CheckpointError

FORMAT = "ris-jobs/checkpoint/v1"
FORMAT_KEY = "format"
MODEL_KEY = "model"
EMA_KEY = "ema"
OPTIMIZER_KEY = "optimizer"
RNG_KEY = "rng"
CONFIG_KEY = "config"
CONFIG_SHA_KEY = "config_sha256"
KIND_KEY = "kind"  # "training" | "diagnostic"
POSITION_KEY = "position"  # phase_index, phase, epoch, batch, global_step
COUNTERS_KEY = "counters"  # non-finite counts and epoch accumulators
EVAL_WEIGHTS_KEY = "eval_weights"  # "model" or "ema": which weights were validated (and are served)
EVAL_MODEL_KEY = "eval_model"  # the validated weights themselves (what an Estimator loads)
EPOCH_START_KEY = "epoch_start"  # the parameters at the start of the epoch (for ‖Δparam‖ after a resume)
#: keys inside RNG_KEY
RNG_TORCH_KEY, RNG_CUDA_KEY = "torch", "cuda"
#: keys inside POSITION_KEY; OPTIMIZER_PHASE_KEY names the phase that owns the optimizer/EMA state
PHASE_INDEX_KEY, PHASE_KEY, EPOCH_KEY = "phase_index", "phase", "epoch"
BATCH_KEY, GLOBAL_STEP_KEY = "batch", "global_step"
OPTIMIZER_PHASE_KEY = "optimizer_phase"
#: the number of data-parallel processes that wrote the position (absent: 1); a step is world_size x batch_size
WORLD_SIZE_KEY = "world_size"
#: keys inside COUNTERS_KEY
NONFINITE_TOTAL_KEY, CONSECUTIVE_NONFINITE_KEY = "nonfinite_total", "consecutive_nonfinite"
UPDATED_KEY, EPOCH_STATS_KEY = "updated", "epoch_stats"
REQUIRED_KEYS = (FORMAT_KEY, MODEL_KEY, CONFIG_KEY, CONFIG_SHA_KEY, POSITION_KEY)


def save_checkpoint(path: Path, state: dict[str, Any]) -> tuple[int, str]:
    """Write `state` atomically to `path`; returns (size in bytes, sha256 hex)."""
    buf = io.BytesIO()
    torch.save({FORMAT_KEY: FORMAT, **state}, buf)
    data = buf.getbuffer()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return len(data), hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path | str, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` and check that it is one of ours.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch checkpoint, holds code
            (refused by weights_only), or lacks our format marker or required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # an untrusted file: any failure inside the unpickler is a bad checkpoint
        reason = str(exc).split(".")[0].splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(
            f"checkpoint {path.name} cannot be loaded safely: it is truncated, corrupt, or holds objects that "
            f"weights_only loading refuses ({type(exc).__name__}: {reason})") from exc
    if not isinstance(state, dict) or state.get(FORMAT_KEY) != FORMAT:
        raise CheckpointError(f"checkpoint {path.name} is not a ris-jobs checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path.name} lacks keys {missing}")
    return state


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
