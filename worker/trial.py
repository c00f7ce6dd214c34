"""A sweep trial seen from its child job: report the objective at each epoch end, and ask the pruner.

Owns: `TrialReporter` and `open_trial_reporter`. The science package never learns about Optuna: the reporter
watches the metric points the trainer sends through its sink, and the trainer's `should_stop` (wrapped by
`TrialReporter.should_stop`) answers "cancel" once the pruner decided, so the trainer stops at the next step
with a checkpoint, as for a user's cancel. The task then ends the job CANCELLED with reason PRUNED.

A failure to reach the study (database hiccup) is logged and costs only that report: the trial runs on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from api_schemas import CheckpointInfo, MetricPoint, TrainingJobConfig
from api_schemas.sweeps import SweepJobConfig, trial_number
from worker.heartbeat import StopReason
from worker.study import open_study, trial_step

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class TrialReporter:
    """Reports one child job's objective to its Optuna trial; an exporter of worker.exports."""

    name = "trial"

    def __init__(self, trial: optuna.Trial, *, metric: str, phase_epochs: list[tuple[str, int]]) -> None:
        self._trial = trial
        self._metric = metric
        self._phase_epochs = phase_epochs
        #: the run's epoch at which the pruner stopped the trial, or None
        self.pruned_at: int | None = None

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        for p in points:
            if p.key != self._metric or self.pruned_at is not None or not math.isfinite(p.value):
                continue
            step = trial_step(self._phase_epochs, p.phase, p.epoch)
            self._trial.report(p.value, step)
            if self._trial.should_prune():
                log.info("the sweep's pruner stops this trial at epoch %d (%s = %.4g)", step, p.key, p.value)
                self.pruned_at = step

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def finish(self, **_: Any) -> None:
        pass

    def should_stop(self, inner: Callable[[], StopReason | None]) -> Callable[[], StopReason | None]:
        """`inner` (cancel, timeout, lease) first, then "cancel" once the pruner decided."""

        def should_stop() -> StopReason | None:
            reason = inner()
            if reason is not None:
                return reason
            return "cancel" if self.pruned_at is not None else None

        return should_stop


def open_trial_reporter(database_url: str, *, sweep_id: str, sweep_config: dict[str, Any], tags: list[str],
                        config: TrainingJobConfig) -> TrialReporter | None:
    """The reporter of a child job of sweep `sweep_id`, or None when its tags name no trial."""
    import optuna

    number = trial_number(tags)
    if number is None:
        return None
    sweep = SweepJobConfig.model_validate(sweep_config)
    study = open_study(database_url, sweep_id, sweep, create=False)
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None:
        log.warning("trial %d is not in the study of sweep %s; the job runs without reporting", number, sweep_id)
        return None
    trial = optuna.trial.Trial(study, frozen._trial_id)
    phase_epochs = [(p.name, p.epochs) for p in config.phases]
    return TrialReporter(trial, metric=sweep.objective.metric, phase_epochs=phase_epochs)
