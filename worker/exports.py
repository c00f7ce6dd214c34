"""The trainer's sink in the worker: the store first (the truth), then the exporters, whose failures never fail
the job.

Owns: the `Exporter` protocol and `ExportingSink`. An exporter (TensorBoard event files, an MLflow run, a sweep
trial's reporter) sees every metric point and checkpoint after the store has them, and `finish` once the
outcome is known. An exporter that raises is logged, counted, and the count is stored as the job's metric
`export/errors/<exporter>`; after `MAX_EXPORT_ERRORS` failures it is switched off for the rest of the attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from api_schemas import CheckpointInfo, JobState, MetricPoint
from worker.sink import StoreSink

log = logging.getLogger(__name__)

#: Metric key prefix of the export error counts: export/errors/<exporter name>.
EXPORT_ERRORS_PREFIX = "export/errors/"
#: Failures after which an exporter is switched off for the attempt.
MAX_EXPORT_ERRORS = 3
#: Phase name of the export error points.
EXPORT_PHASE = "export"


class Exporter(Protocol):
    name: str

    def log_metrics(self, points: Sequence[MetricPoint]) -> None: ...

    def log_checkpoint(self, info: CheckpointInfo) -> None: ...

    def finish(self, *, state: JobState, report: dict[str, Any] | None, final_checkpoint: Path | None) -> None:
        """Called once, after the trainer returned or raised, before the terminal state is written."""


class ExportingSink:
    """A MetricSink: StoreSink, then each exporter (guarded)."""

    def __init__(self, store: StoreSink, exporters: Sequence[Exporter] = ()) -> None:
        self.store = store
        self.exporters = list(exporters)
        self.errors: dict[str, int] = {}
        self._last: MetricPoint | None = None

    def open(self, name: str, factory: Callable[[], Exporter | None]) -> Exporter | None:
        """Build an exporter and add it; a failure to build it is logged and counted like any export failure."""
        made: list[Exporter | None] = []
        self._guard(_Named(name), "open", lambda: made.append(factory()))
        exporter = made[0] if made else None
        if exporter is not None:
            self.exporters.append(exporter)
        return exporter

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        self.store.log_metrics(points)
        if points:
            self._last = points[-1]
        for exporter in self._live():
            self._guard(exporter, "log_metrics", partial(exporter.log_metrics, points))

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        self.store.log_checkpoint(info)
        for exporter in self._live():
            self._guard(exporter, "log_checkpoint", partial(exporter.log_checkpoint, info))

    def close(self) -> None:
        self.store.close()

    def finish(self, *, state: JobState, report: dict[str, Any] | None, final_checkpoint: Path | None) -> None:
        """Let every exporter finish, then store the error counts (fenced, like every metric point)."""
        for exporter in self._live():
            self._guard(exporter, "finish", partial(exporter.finish, state=state, report=report,
                                                    final_checkpoint=final_checkpoint))
        self.store.flush()  # the store may have been closed already (a failed run): the counts still go in
        self.store.close()

    def _live(self) -> list[Exporter]:
        return [e for e in self.exporters if self.errors.get(e.name, 0) < MAX_EXPORT_ERRORS]

    def _guard(self, exporter: Exporter | _Named, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # an export never fails the job: the store is the truth
            count = self.errors.get(exporter.name, 0) + 1
            self.errors[exporter.name] = count
            off = " (switched off for this attempt)" if count >= MAX_EXPORT_ERRORS else ""
            log.warning("export %s.%s failed (%d so far)%s: %s: %s", exporter.name, what, count, off,
                        type(exc).__name__, exc)
            last = self._last
            point = MetricPoint(phase=last.phase if last else EXPORT_PHASE, epoch=last.epoch if last else 0,
                                step=last.step if last else 0, key=EXPORT_ERRORS_PREFIX + exporter.name,
                                value=float(count))
            self.store.log_metrics([point])


class _Named:
    """The name of an exporter that could not be built (for its error count)."""

    def __init__(self, name: str) -> None:
        self.name = name
