"""One call that runs a training or diagnostic job end to end (the seam the worker uses; docs/CONTRACTS.md).

Owns run_training_job. Imports no Celery, HTTP, SQL or Redis: the caller passes a MetricSink.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from api_schemas import CheckpointInfo, DiagnosticJobConfig, MetricPoint, TrainingJobConfig
from ris_model.diagnose.checks import diagnose
from ris_model.errors import NonFiniteAbort
from ris_model.model.network import RisNet
from ris_model.train.distributed import SINGLE, DistContext, StopReason
from ris_model.train.hooks import NO_HOOKS, StepHooks
from ris_model.train.sinks import MetricSink
from ris_model.train.trainer import FitResult, Trainer, never_stop

__all__ = ["FitResult", "StopReason", "pick_device", "run_training_job"]


def pick_device(device: str | None) -> torch.device:
    """`device` as given, or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _TeeSink:
    """Forwards to the caller's sink and keeps the points for the diagnostic checks."""

    def __init__(self, sink: MetricSink) -> None:
        self.sink = sink
        self.points: list[MetricPoint] = []

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        self.points.extend(points)
        self.sink.log_metrics(points)

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        self.sink.log_checkpoint(info)

    def close(self) -> None:
        self.sink.close()


def run_training_job(config: TrainingJobConfig, *, sink: MetricSink, checkpoint_dir: Path,
                     device: str | None = None, resume_from: Path | None = None,
                     should_stop: Callable[[], StopReason | None] = never_stop,
                     checkpoint_interval_s: float | None = None, hooks: StepHooks = NO_HOOKS,
                     init_weights: Mapping[str, torch.Tensor] | None = None, dist: DistContext = SINGLE) -> FitResult:
    """Build the model, run every phase through the Trainer (with `hooks` at each step), and return the result.

    `init_weights` (a state dict of the same network, e.g. a checkpoint's validated weights) replaces the random
    initialization: the run continues or fine-tunes them with fresh optimizers and schedules. A `resume_from`
    checkpoint, when given, takes precedence (it restores the run's own weights and position).

    A DiagnosticJobConfig also gets its verdict (api_schemas.DiagnosticReport as JSON) in `FitResult.report`;
    when the run aborts on non-finite steps, the report rides on the NonFiniteAbort as `.report`.
    The sink is not closed here.

    With `dist` (one rank of a data-parallel group, ris_model.train.distributed) every rank calls this with the
    same config; rank 0 alone reports, checkpoints and builds the diagnostic's report.
    """
    dev = pick_device(device)
    torch.manual_seed(config.data.seed)
    model = RisNet(config.system, config.model)
    if init_weights is not None and resume_from is None:
        model.load_state_dict(init_weights, strict=True)
    is_diagnostic = isinstance(config, DiagnosticJobConfig)
    tee = _TeeSink(sink)
    trainer = Trainer(config, model, tee, dev, checkpoint_dir=checkpoint_dir,
                      checkpoint_interval_s=checkpoint_interval_s,
                      kind="diagnostic" if is_diagnostic else "training", hooks=hooks, dist=dist)
    started = time.perf_counter()
    try:
        result = trainer.fit(should_stop, resume_from=resume_from)
    except NonFiniteAbort as exc:
        if is_diagnostic and dist.is_main:
            aborted = trainer.result_so_far()
            exc.report = _report(config, trainer, aborted, tee, time.perf_counter() - started)
        raise
    if is_diagnostic and result.stopped is None and dist.is_main:
        result.report = _report(config, trainer, result, tee, time.perf_counter() - started)
    return result


def _report(config: TrainingJobConfig, trainer: Trainer, result: FitResult, tee: _TeeSink,
            train_seconds: float) -> dict[str, Any]:
    assert isinstance(config, DiagnosticJobConfig)
    report = diagnose(config, trainer.model, result, tee.points, trainer.scenes,
                      confusion=trainer.last_confusion, train_seconds=train_seconds)
    return report.model_dump(mode="json")
