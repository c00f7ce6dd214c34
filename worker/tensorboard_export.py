"""TensorBoard event files of a training or diagnostic job, as a downloadable artifact.

Owns: `TensorBoardExporter` and `TENSORBOARD_ARTIFACT`. Every metric point becomes a scalar (tag = the metric
key, step = the global step) in `tensorboard/` of the job's scratch directory (worker/scratch.py); at the end the
event files are joined, oldest first, and uploaded to the artifact store as the artifact `tensorboard.tfevents`
(TFRecord files concatenate into one valid file), served by `GET /v1/jobs/{id}/artifacts/tensorboard.tfevents`.
Read it back with TensorBoard's `EventAccumulator(path)`, or put it in a directory and run `tensorboard --logdir`.
torch.utils.tensorboard is imported when the exporter is built (in the worker's child, never before fork).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api_schemas import CheckpointInfo, JobState, MetricPoint
from server.store.artifacts import ArtifactStore, artifact_key

TENSORBOARD_ARTIFACT = "tensorboard.tfevents"
TENSORBOARD_SUBDIR = "tensorboard"


class TensorBoardExporter:
    name = "tensorboard"

    def __init__(self, artifacts: ArtifactStore, job_id: str, scratch_dir: Path) -> None:
        """Event files go to `scratch_dir/tensorboard` (the job's scratch directory, worker/scratch.py); `finish`
        uploads them, joined, as the job's artifact."""
        from torch.utils.tensorboard import SummaryWriter

        self._artifacts, self._job_id = artifacts, job_id
        self._dir = scratch_dir / TENSORBOARD_SUBDIR
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
        self._artifacts.objects.write(artifact_key(self._artifacts, self._job_id, TENSORBOARD_ARTIFACT), data)
