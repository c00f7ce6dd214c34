"""The body of a `sweep` job: an Optuna ask/tell loop whose trials are child jobs.

Owns: `SweepDriver` (run under the sweep job's lease by `worker.tasks`), `SweepOutcome` and `sweep_report`.

Each trial is a child job (`parent_id` = the sweep, tag `trial:<number>`) created through the same store function
the API uses and dispatched to the GPU workers like any job; at most `max_concurrent` run at once. The child's
worker reports the objective into the trial at every epoch end and stops the child when the pruner says so
(`worker.trial`); the driver only asks for new trials and tells Optuna how finished children ended:

| child job ends | the trial is told |
|---|---|
| SUCCEEDED | COMPLETE with the objective's last value (FAIL when it has none, or it is not finite) |
| CANCELLED, reason PRUNED | PRUNED |
| FAILED, or CANCELLED by a user | FAIL |

The study is the driver's memory, so a driver that dies loses nothing: the next attempt reopens the study and
reconciles. A trial RUNNING in the study with a child job keeps waiting on that child (finished → told); a trial
RUNNING without one (the driver died between ask and create) gets its child now. A child is created with the
idempotency key `sweep-<id>-trial-<number>`, so a retry can never create a second child for one trial.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import FailureReason, JobKind, JobState, MetricPoint
from api_schemas.lineage import MAX_TAGS, config_sha256
from api_schemas.metrics import PROGRESS_FRACTION, SWEEP_BEST_VALUE, SWEEP_TRIALS_ENDED
from api_schemas.sweeps import SweepJobConfig, trial_number, trial_tag
from server.dispatch import DispatchError, dispatch_job
from server.store import job_queries as store_queries
from server.store import jobs as store_jobs
from server.store import live
from server.store.models import JobRow
from server.store.principals import WORKER, Principal
from worker.sink import StoreSink
from worker.study import distributions, make_sampler, open_study, study_name

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Phase name of the sweep's own metric points.
SWEEP_PHASE = "sweep"
StopCheck = Callable[[], str | None]


@dataclass(frozen=True)
class SweepOutcome:
    """report: the sweep's report (None when stopped early); stopped: "cancel" | "timeout" | None."""

    report: dict[str, Any] | None
    stopped: str | None = None


@dataclass(frozen=True)
class SweepJob:
    """What the driver needs of the sweep's own row."""

    id: str
    name: str | None
    #: `jobs.principal` of the sweep: its trials belong to the same owner
    owner: str | None
    tags: list[str]
    max_attempts: int


class SweepDriver:
    """Runs one attempt of a sweep job until every trial has ended, or until `should_stop` says stop."""

    def __init__(self, job: SweepJob, config: SweepJobConfig, *, sessions: sessionmaker[Session],
                 database_url: str, job_queue: str, producer: Celery, redis: Redis | None,
                 sink: StoreSink | None = None, poll_interval_s: float = 1.0) -> None:
        self.job, self.config = job, config
        self._sink = sink
        self._n_ended = -1
        #: the worker, creating jobs on behalf of the sweep's owner
        self._acting = Principal(id=WORKER.id, owner=job.owner)
        self._sessions, self._database_url = sessions, database_url
        self._job_queue, self._producer, self._redis = job_queue, producer, redis
        self._poll_interval_s = poll_interval_s
        self._distributions = distributions(config)

    def run(self, should_stop: StopCheck) -> SweepOutcome:
        """Ask, dispatch, wait and tell until `n_trials` trials have ended. Raises LeaseLost through should_stop."""
        study = open_study(self._database_url, self.job.id, self.config, create=True)
        trials_so_far = len(study.get_trials(deepcopy=False))
        if trials_so_far:  # a resumed driver: fresh draws, not the predecessor's again
            study.sampler = make_sampler(self.config, trials_so_far=trials_so_far)
        log.info("sweep %s: study %s, %d trials, at most %d at once", self.job.id, study_name(self.job.id),
                 self.config.n_trials, self.config.max_concurrent)
        while True:
            reason = should_stop()
            if reason is not None:
                self._stop_children(study, reason)
                return SweepOutcome(report=None, stopped=reason)
            running = self._reconcile(study)
            self._log_progress(study)
            n_started = len(study.get_trials(deepcopy=False))
            while running < self.config.max_concurrent and n_started < self.config.n_trials:
                trial = study.ask(self._distributions)
                self._start_child(study, trial.number, trial.params, trial=trial)
                running, n_started = running + 1, n_started + 1
            if running == 0 and n_started >= self.config.n_trials:
                break
            time.sleep(self._poll_interval_s)
        report = sweep_report(study, self.config, self._children_by_trial())
        log.info("sweep %s finished: best trial %s", self.job.id, (report.get("best_trial") or {}).get("number"))
        return SweepOutcome(report=report)

    def _log_progress(self, study: optuna.Study) -> None:
        """Points `progress/fraction`, `sweep/trials_ended` and `sweep/best_value` when a trial has ended."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        ended = sum(t.state.is_finished() for t in trials)
        if self._sink is None or ended == self._n_ended:
            return
        self._n_ended = ended
        values = {PROGRESS_FRACTION: min(1.0, ended / self.config.n_trials), SWEEP_TRIALS_ENDED: float(ended)}
        if any(t.state == TrialState.COMPLETE for t in trials):
            values[SWEEP_BEST_VALUE] = float(study.best_value)
        self._sink.log_metrics([MetricPoint(phase=SWEEP_PHASE, epoch=0, step=ended, key=k, value=v)
                                for k, v in values.items()])

    # -- trials and their child jobs --

    def _children_by_trial(self) -> dict[int, JobRow]:
        with self._sessions() as session:
            children = store_queries.list_children(session, self.job.id, principal=WORKER)
        return {n: c for c in children if (n := trial_number(c.tags or [])) is not None}

    def _reconcile(self, study: optuna.Study) -> int:
        """Tell Optuna how finished children ended; give a child to a RUNNING trial that has none.
        Returns how many trials are still running."""
        from optuna.trial import TrialState

        children = self._children_by_trial()
        running = 0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            child = children.get(trial.number)
            if child is None:
                log.warning("sweep %s: trial %d has no child job (the driver stopped before creating it); "
                            "creating it now", self.job.id, trial.number)
                self._start_child(study, trial.number, trial.params)
                running += 1
            elif JobState(child.state).is_terminal():
                tell_outcome(study, trial.number, child, self.config.objective.metric)
            else:
                running += 1
        return running

    def _start_child(self, study: optuna.Study, number: int, params: dict[str, Any],
                     trial: optuna.Trial | None = None) -> None:
        """Create (idempotently) and dispatch the child job of trial `number`."""
        try:
            config = self.config.trial_config(params)
        except ValueError as exc:  # a combination the base config's own checks refuse (pydantic ValidationError)
            log.warning("sweep %s: trial %d's parameters %s make no valid config: %s", self.job.id, number,
                        params, exc)
            study.tell(number, state=_trial_state("FAIL"))
            return
        tags = [*self.job.tags[: MAX_TAGS - 1], trial_tag(number)]
        with self._sessions() as session:
            child = store_jobs.create_job(
                session, kind=JobKind(self.config.base.kind), name=f"{self.job.name or 'sweep'} trial {number}",
                config=config, max_attempts=self.job.max_attempts, principal=self._acting,
                idempotency_key=f"sweep-{self.job.id}-trial-{number}", body_sha256=config_sha256(config),
                parent_id=self.job.id, tags=tags,
            )
            if child.celery_task_id is None:
                try:
                    dispatch_job(session, self._producer, child.id, self._job_queue)
                except DispatchError as exc:  # the dispatch sweep sends it once the broker is back
                    log.warning("sweep %s: trial %d's job %s stays QUEUED undispatched: %s", self.job.id, number,
                                child.id, exc)
        if trial is not None:
            trial.set_user_attr("job_id", child.id)
        log.info("sweep %s: trial %d → job %s %s", self.job.id, number, child.id, params)

    def _stop_children(self, study: optuna.Study, reason: str) -> None:
        """The sweep stops early: cancel its unfinished children and fail their trials."""
        from optuna.trial import TrialState

        with self._sessions() as session:
            cancelling = store_jobs.cancel_children(session, self.job.id, principal=WORKER)
        for child in cancelling:
            if self._redis is not None:
                try:
                    live.set_cancel_flag(self._redis, child.id)
                except RedisError as exc:  # the child's heartbeat reads CANCELLING from SQL too
                    log.warning("cancel flag of job %s not set: %s", child.id, exc)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _tell(study, trial.number, state=_trial_state("FAIL"))
        log.info("sweep %s stopped (%s): %d running child job(s) asked to cancel", self.job.id, reason,
                 len(cancelling))


def _trial_state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _tell(study: optuna.Study, number: int, *, value: float | None = None, state: Any = None) -> None:
    """study.tell that tolerates a trial another attempt of the driver already finished."""
    try:
        if value is not None:
            study.tell(number, value)
        else:
            study.tell(number, state=state)
    except (RuntimeError, ValueError) as exc:
        log.warning("trial %d was not told (%s): it had already finished", number, exc)


def objective_value(child: JobRow, metric: str) -> float | None:
    """The objective's last value in a child job's latest metrics (None when missing or not finite)."""
    raw = (child.latest_metrics or {}).get(metric)
    if raw is None:
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def tell_outcome(study: optuna.Study, number: int, child: JobRow, metric: str) -> None:
    """Tell the study how the child job of trial `number` ended (see the module's table)."""
    state = JobState(child.state)
    if state is JobState.SUCCEEDED:
        value = objective_value(child, metric)
        if value is None:
            log.warning("trial %d's job %s succeeded without a finite %s; the trial fails", number, child.id, metric)
            _tell(study, number, state=_trial_state("FAIL"))
        else:
            _tell(study, number, value=value)
    elif state is JobState.CANCELLED and child.failure_reason == FailureReason.PRUNED:
        _tell(study, number, state=_trial_state("PRUNED"))
    else:
        _tell(study, number, state=_trial_state("FAIL"))
    log.info("trial %d (job %s) ended %s %s", number, child.id, child.state, child.failure_reason or "")


def sweep_report(study: optuna.Study, config: SweepJobConfig, children: dict[int, JobRow]) -> dict[str, Any]:
    """The sweep's report: trial counts, the best trial with its config ready to POST, parameter importances."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                      TrialState.FAIL)}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best: dict[str, Any] | None = None
    if complete:
        top = study.best_trial
        child = children.get(top.number)
        best = {
            "number": top.number, "value": top.value, "params": top.params,
            "job_id": child.id if child is not None else None,
            "job": {"kind": config.base.kind, "config": config.trial_config(top.params)},
        }
    return {
        "kind": JobKind.SWEEP.value,
        "study_name": study.study_name,
        "objective": config.objective.model_dump(mode="json"),
        "n_trials": len(trials),
        "counts": counts,
        "best_trial": best,
        "importances": param_importances(study, complete_trials=len(complete)),
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "job_id": children[t.number].id if t.number in children else None}
            for t in trials
        ],
    }


def param_importances(study: optuna.Study, *, complete_trials: int) -> dict[str, float]:
    """Importances of the space's parameters by PED-ANOVA (Optuna's evaluator that needs no scikit-learn; it
    compares where the best trials' values lie against all trials'), summing to 1; {} with fewer than 2
    complete trials, or when they cannot be told apart."""
    import optuna

    if complete_trials < 2:
        return {}
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError) as exc:
        log.warning("parameter importances not computed: %s", exc)
        return {}
    return {k: float(v) for k, v in importances.items()}
