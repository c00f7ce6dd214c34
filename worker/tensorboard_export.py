"""TensorBoard event files of a training or diagnostic job, as a downloadable artifact.

Owns: `TensorBoardExporter` and `TENSORBOARD_ARTIFACT`. Every metric point becomes a scalar (tag = the metric
key, step = the global step) in `<job dir>/tensorboard/` (one event file per attempt); at the end the event
files are joined, oldest first, into the artifact `tensorboard.tfevents` (TFRecord files concatenate into one
valid file), served by `GET /v1/jobs/{id}/artifacts/tensorboard.tfevents`. Read it back with TensorBoard's
`EventAccumulator(path)`, or put it in a directory and run `tensorboard --logdir`.
torch.utils.tensorboard is imported when the exporter is built (in the worker's child, never before fork).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api_schemas import CheckpointInfo, JobState, MetricPoint
from server.store.artifacts import ArtifactStore, artifact_path, write_atomic

TENSORBOARD_ARTIFACT = "tensorboard.tfevents"
TENSORBOARD_SUBDIR = "tensorboard"


class TensorBoardExporter:
    name = "tensorboard"

    def __init__(self, artifacts: ArtifactStore, job_id: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._artifacts, self._job_id = artifacts, job_id
        self._dir = artifacts.job_dir(job_id) / TENSORBOARD_SUBDIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self._dir), flush_secs=30)

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        for p in points:
            if math.isfinite(p.value):
                self._writer.add_scalar(p.key, p.value, global_step=p.step)

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def finish(self, *, state: JobState, report: dict[str, Any] | None, final_checkpoint: Path | None) -> None:
        self._writer.close()
        files = sorted(self._dir.glob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime)
        data = b"".join(f.read_bytes() for f in files)
        write_atomic(artifact_path(self._artifacts, self._job_id, TENSORBOARD_ARTIFACT), data)
