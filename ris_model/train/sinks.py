"""Where the trainer sends metric points and checkpoint records (SCIENCE.md, "The trainer";
ARCHITECTURE.md, "The life of a metric").

Owns: the MetricSink protocol and three small sinks (NullSink, MemorySink for tests, JsonlSink for the CLI).
Must not import celery, fastapi, sqlalchemy or redis: the worker brings its own sink (worker/sink.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from api_schemas import CheckpointInfo, MetricPoint


class MetricSink(Protocol):
    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        """Called with a batch of points; all values are Python floats."""

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        """Called after a checkpoint file was written atomically (it exists and is complete)."""

    def close(self) -> None:
        """Called once when the run ends, however it ends."""


class NullSink:
    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        pass

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps everything in lists; tests assert on them."""

    def __init__(self) -> None:
        self.points: list[MetricPoint] = []
        self.checkpoints: list[CheckpointInfo] = []
        self.closed = False

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        self.points.extend(points)

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)

    def close(self) -> None:
        self.closed = True

    def values(self, key: str, phase: str | None = None) -> list[float]:
        """The values logged under `key` (optionally in one phase), in order."""
        return [p.value for p in self.points if p.key == key and (phase is None or p.phase == phase)]


class JsonlSink:
    """Appends one JSON object per point to `metrics.jsonl` and per checkpoint to `checkpoints.jsonl`."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self._checkpoints = (out_dir / "checkpoints.jsonl").open("a", encoding="utf-8")

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        for p in points:
            self._metrics.write(p.model_dump_json() + "\n")
        self._metrics.flush()

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        self._checkpoints.write(info.model_dump_json() + "\n")
        self._checkpoints.flush()

    def close(self) -> None:
        self._metrics.close()
        self._checkpoints.close()

