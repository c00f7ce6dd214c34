"""One call that runs a training or diagnostic job end to end (the seam the worker uses; docs/CONTRACTS.md).

Owns run_training_job. Imports no Celery, HTTP, SQL or Redis: the caller passes a MetricSink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from api_schemas import CheckpointInfo, DiagnosticJobConfig, MetricPoint, TrainingJobConfig
from api_schemas import metrics as keys
from ris_model.diagnose.checks import diagnose
from ris_model.diagnose.progress import ProgressPlan
from ris_model.errors import NonFiniteAbort
from ris_model.model.network import RisNet
from ris_model.scenes import Split
from ris_model.train.distributed import SINGLE, DistContext, StopReason
from ris_model.train.hooks import NO_HOOKS, StepHooks
from ris_model.train.sinks import MetricSink
from ris_model.train.trainer import FitResult, Trainer, never_stop

__all__ = ["FitResult", "StopReason", "pick_device", "run_training_job"]

log = logging.getLogger(__name__)
#: the progress phase of building the model and drawing the fixed scene pools, before the first optimizer step
SETUP_PHASE = "setup"
#: the progress phase of a diagnostic's checks, after the last training phase
CHECKS_PHASE = "checks"


def pick_device(device: str | None) -> torch.device:
    """`device` as given, or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _TeeSink:
    """Forwards to the caller's sink and keeps the points for the diagnostic checks. The trainer's
    `progress/fraction` (its share of steps done) is forwarded as the job's fraction (`ProgressPlan`), so that
    setup and checks have their own share of the bar."""

    def __init__(self, sink: MetricSink, plan: ProgressPlan) -> None:
        self.sink, self.plan = sink, plan
        self.points: list[MetricPoint] = []

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        self.points.extend(points)
        self.sink.log_metrics([p.model_copy(update={"value": self.plan.fraction_training(p.value)})
                               if p.key == keys.PROGRESS_FRACTION else p for p in points])

    def log_progress(self, phase: str, step: int, fraction: float) -> None:
        """A progress point of a part the trainer does not run (setup, checks); not kept for the checks."""
        self.sink.log_metrics([MetricPoint(phase=phase, epoch=0, step=step, key=keys.PROGRESS_FRACTION,
                                           value=fraction)])

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
    plan = ProgressPlan.for_config(config)
    tee = _TeeSink(sink, plan)
    tee.log_progress(SETUP_PHASE, 0, plan.fraction_setup(0.0))
    torch.manual_seed(config.data.seed)
    model = RisNet(config.system, config.model)
    if init_weights is not None and resume_from is None:
        model.load_state_dict(init_weights, strict=True)
    is_diagnostic = isinstance(config, DiagnosticJobConfig)
    trainer = Trainer(config, model, tee, dev, checkpoint_dir=checkpoint_dir,
                      checkpoint_interval_s=checkpoint_interval_s,
                      kind="diagnostic" if is_diagnostic else "training", hooks=hooks, dist=dist)
    _draw_scene_pools(trainer, tee)
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


def _draw_scene_pools(trainer: Trainer, tee: _TeeSink) -> None:
    """Draw the run's fixed scene pools (train unless fresh each epoch, then val) as part of the setup phase,
    with a progress point after each, rather than inside the first training step and the first validation."""
    data, step, t0 = trainer.config.data, trainer.pos.global_step, time.perf_counter()
    train_scenes = 0 if data.fresh_train_each_epoch else data.n_train
    total = train_scenes + data.n_val
    if train_scenes:
        trainer.scenes.pool(Split.TRAIN_POOL, train_scenes)
        tee.log_progress(SETUP_PHASE, step, tee.plan.fraction_setup(train_scenes / total))
    next(iter(trainer.scenes.val_batches()), None)
    tee.log_progress(SETUP_PHASE, step, tee.plan.fraction_setup(1.0))
    log.info("setup: model built, %d train and %d val scenes drawn in %.1f s", train_scenes, data.n_val,
             time.perf_counter() - t0)


def _report(config: TrainingJobConfig, trainer: Trainer, result: FitResult, tee: _TeeSink,
            train_seconds: float) -> dict[str, Any]:
    assert isinstance(config, DiagnosticJobConfig)
    step = trainer.pos.global_step

    def on_progress(done: int, total: int) -> None:
        tee.log_progress(CHECKS_PHASE, step, tee.plan.fraction_checks(done))

    report = diagnose(config, trainer.model, result, tee.points, trainer.scenes,
                      confusion=trainer.last_confusion, train_seconds=train_seconds, on_progress=on_progress)
    return report.model_dump(mode="json")
