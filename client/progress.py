"""What `ris-jobs watch` shows: a job's progress folded from its metric stream (no I/O here).

`LiveProgress.update(item)` takes each StreamItem of `Client.stream_metrics` and keeps the latest phase,
epoch, step, completed fraction, loss, K accuracy and the count of skipped non-finite steps; `summary()`
renders them as one short line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from api_schemas import JobPublic, JobState, StoredMetricPoint
from api_schemas.metrics import (
    NONFINITE_CAUSE_PREFIX,
    PROGRESS_FRACTION,
    TRAIN_EPOCH_LOSS,
    TRAIN_K_ACC,
    TRAIN_LOSS,
    VAL_K_ACC,
)
from client.client import StateChange, StreamItem

#: Keys whose latest value is shown as the loss, most specific first.
_LOSS_KEYS = (TRAIN_LOSS, TRAIN_EPOCH_LOSS)
#: Keys whose latest value is shown as K_acc: validation when there is one, else training.
_K_ACC_KEYS = (VAL_K_ACC, TRAIN_K_ACC)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


@dataclass
class LiveProgress:
    """A job's progress as the watch view shows it."""

    state: JobState = JobState.QUEUED
    phase: str | None = None
    epoch: int = 0
    step: int = 0
    fraction: float = 0.0
    nonfinite: int = 0
    failure: str | None = None
    latest: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of_job(cls, job: JobPublic) -> LiveProgress:
        """Start from what the job record already says (the stream then replays every point)."""
        return cls(state=job.state, phase=job.progress.phase, epoch=job.progress.epoch, step=job.progress.step,
                   fraction=job.progress.fraction)

    @property
    def loss(self) -> float | None:
        return next((self.latest[k] for k in _LOSS_KEYS if k in self.latest), None)

    @property
    def k_acc(self) -> float | None:
        return next((self.latest[k] for k in _K_ACC_KEYS if k in self.latest), None)

    def update(self, item: StreamItem) -> None:
        if isinstance(item, StateChange):
            self.state = item.state
            if item.failure is not None:
                self.failure = f"{item.failure.reason}: {item.failure.message}"
            return
        self._point(item)

    def _point(self, point: StoredMetricPoint) -> None:
        if point.phase != self.phase:
            self.phase, self.epoch = point.phase, point.epoch
        self.epoch = max(self.epoch, point.epoch)
        self.step = max(self.step, point.step)
        if point.key == PROGRESS_FRACTION:
            self.fraction = min(1.0, max(0.0, point.value))
        elif point.key.startswith(NONFINITE_CAUSE_PREFIX):
            self.nonfinite += 1
        else:
            self.latest[point.key] = point.value

    def summary(self) -> str:
        """`k_only ep 2 step 40 | loss 0.412 | K_acc 0.71 | non-finite 0` (no state, no bar)."""
        where = f"{self.phase or '-'} ep {self.epoch} step {self.step}"
        return f"{where} | loss {_fmt(self.loss)} | K_acc {_fmt(self.k_acc, 3)} | non-finite {self.nonfinite}"
