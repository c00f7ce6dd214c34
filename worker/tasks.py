"""The `run_job` task: claim, run the trainer, finish with one fenced terminal transition
(ARCHITECTURE.md, "The job state machine", "The life of a job").

Owns: `run_job` (registered as `server.dispatch.RUN_JOB_TASK`) and its body `execute_job`, which tests call
without Celery. The task gets a job id, never an object, and re-reads the row:

0. a job whose `resources` this worker cannot give (worker/capacity.py) is not claimed: it stays QUEUED, its
   reason is recorded as a QUEUED → QUEUED event, and its message goes back to the queue for another worker;
1. claim QUEUED → RUNNING with a fresh lease token; None means the message was a duplicate delivery (the
   job already runs, ran, or was cancelled): log and return, and Celery acks the message;
0. a job whose `resources` this worker cannot give (worker/capacity.py) is not claimed: it stays QUEUED, its
   reason is recorded as a QUEUED → QUEUED event, and its message goes back to the queue for another worker;
1. claim QUEUED → RUNNING with a fresh lease token; None means the message was a duplicate delivery (the
   job already runs, ran, or was cancelled): log and return, and Celery acks the message;
2. attach the per-job log file (in the job's scratch directory, worker/scratch.py, continuing the log of earlier
   attempts and uploaded to the artifact store as it grows), start the monitor thread (heartbeat, cancel flag,
   timed metric flushes, log uploads);
3. build the config from the row; download the latest recorded checkpoint of an earlier attempt (on whichever
   machine it ran) from the artifact store into the scratch directory, to resume from (or, on a first run, the
   `init_from` weights);
4. call `ris_model.train.jobs.run_training_job` (imported here, never in the prefork parent: no CUDA before
   fork), as rank 0 of `resources.gpus` processes (worker/launcher.py), writing checkpoints to the scratch
   directory (the sink uploads each one to the artifact store before recording it), through an `ExportingSink`
   (the store, then TensorBoard, MLflow when configured, and the sweep trial's reporter for a sweep's child job);
   or, for an `evaluation` job, `worker.evaluation.run_evaluation_job`, or, for a `sweep` job, the sweep driver
   (`worker.sweep`); a lost rank requeues the job (FAILED WORKER_LOST once its attempts are spent);
5. finish: SUCCEEDED (+ report) | CANCELLED (reason PRUNED when a sweep's pruner stopped it) | FAILED TIMEOUT |
   FAILED <classify_failure(exc)> (+ the report a NonFiniteAbort carries), one fenced transition, then publish
   the state on Redis.

If the lease is lost (the reaper gave the job to another attempt), the attempt writes nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Task
from pydantic import BaseModel
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import (
    DiagnosticJobConfig,
    FailureReason,
    JobKind,
    JobState,
    Resources,
    SweepJobConfig,
    TrainingJobConfig,
    split_stored_config,
)
from server.dispatch import RUN_JOB_TASK, DispatchError, dispatch_job, make_producer
from server.settings import Settings, get_settings
from server.store import job_queries as store_queries
from server.store import jobs as store_jobs
from server.store import live
from server.store.artifacts import ArtifactStore
from server.store.db import make_engine, make_session_factory
from server.store.errors import InvalidTransition, JobNotFound, LeaseLost
from server.store.principals import WORKER
from worker.app import app
from worker.capacity import (
    REQUEUE_DELAY_S,
    CapacityAnnouncer,
    WorkerCapacity,
    announce,
    live_capacities,
    local_capacity,
    run_device,
    served_queues,
    waiting_reason,
)
from worker.evaluation import run_evaluation_job
from worker.exports import ExportingSink
from worker.failures import TrainerFailed, UserInputRejected, classify_failure, failure_message, traceback_tail
from worker.heartbeat import JobMonitor, make_should_stop
from worker.init_from import initial_weights
from worker.plots import write_metric_plots
from worker.scratch import JobScratch, LogUploader
from worker.sink import StoreSink
from worker.store_retry import retry_store
from worker.sweep import SweepDriver, SweepJob
from worker.trial import TrialReporter, open_trial_reporter

if TYPE_CHECKING:
    from ris_model.train.hooks import StepHooks

log = logging.getLogger(__name__)

#: Loggers whose INFO records go to the job's log file.
JOB_LOGGERS = ("worker", "ris_model")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Why a job whose config.debug injects faults fails on a worker without ALLOW_FAULT_INJECTION.
FAULT_INJECTION_REFUSED = "config.debug asks for fault injection; this worker refuses it (ALLOW_FAULT_INJECTION=false)"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ends: the terminal state to write, why, and the diagnostic report if any."""

    state: JobState
    failure_reason: FailureReason | None = None
    message: str | None = None
    report: dict[str, Any] | None = None


@dataclass
class JobResources:
    """What one task execution opens and must close: DB engine, sessions, Redis, artifact store, and where
    this worker's local scratch directory is."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: Redis
    artifacts: ArtifactStore
    scratch_root: Path
    #: time.monotonic() when the task started: Celery's time limits count from here, and so does the trainer's
    #: stop deadline (the child's torch import and setup come out of the same budget)
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, settings: Settings) -> JobResources:
        engine = make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            redis=Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0),
            artifacts=ArtifactStore(settings.artifact_location),
            scratch_root=Path(settings.scratch_dir),
        )

    def close(self) -> None:
        self.redis.close()
        self.engine.dispose()


@app.task(name=RUN_JOB_TASK, bind=True)  # type: ignore[untyped-decorator]  # celery ships no types
def run_job(self: Task, job_id: str) -> str | None:
    """Celery entry point; see the module docstring. Returns the terminal state written, or None."""
    worker = self.request.hostname or socket.gethostname()
    state = execute_job(job_id, worker=worker)
    return state.value if state is not None else None


def execute_job(job_id: str, *, worker: str, settings: Settings | None = None) -> JobState | None:
    """Run one delivery of `job_id`. Returns the terminal state written, or None (duplicate / lease lost)."""
    res = JobResources.open(settings or get_settings())
    try:
        capacity = local_capacity(served_queues(app, res.settings.job_queue))
        announce(res.redis, worker, capacity)
        if not _can_run_here(res, job_id, worker=worker, capacity=capacity):
            return None
        lease_token = uuid.uuid4().hex
        row = _claim(res, job_id, worker=worker, lease_token=lease_token)
        if row is None:
            return None
        scratch = JobScratch(res.scratch_root, job_id)
        scratch.remove()  # what an earlier attempt on this machine left is stale: the store has what counts
        scratch.create()
        uploader = LogUploader(res.artifacts, job_id, scratch.log_path, interval_s=res.settings.log_upload_interval_s)
        try:
            with job_log(scratch.log_path):
                log.info("claimed job %s (attempt %s) on %s", job_id, row.attempt, worker)
                return _run_claimed(res, row, scratch=scratch, uploader=uploader, lease_token=lease_token,
                                    worker=worker, capacity=capacity)
        finally:
            uploader.stop()
            scratch.remove()
    finally:
        res.close()


def stored_resources(kind: str, config: dict[str, Any]) -> tuple[dict[str, Any], Resources]:
    """A stored job's config and resources (evaluation jobs keep their config whole and run one process)."""
    if kind == JobKind.EVALUATION:
        return config, Resources()
    return split_stored_config(config)


def _can_run_here(res: JobResources, job_id: str, *, worker: str, capacity: WorkerCapacity) -> bool:
    """True when this worker can give the job its resources (or the job is not QUEUED: the claim decides).

    Otherwise the job stays QUEUED: its reason becomes a job event (once per reason), and after
    REQUEUE_DELAY_S its message is sent again, to the end of the queue, for another worker."""
    with res.sessions() as session:
        try:
            row = store_jobs.get_job(session, job_id, principal=WORKER)
        except JobNotFound:
            return True  # _claim logs and drops it
        if row.state != JobState.QUEUED:
            return True
        _, resources = stored_resources(row.kind, row.config)
        reason = waiting_reason(resources, worker, capacity, live_capacities(res.redis))
        if reason is None:
            return True
        if store_jobs.note_waiting(session, job_id, reason):
            log.info("job %s stays QUEUED: %s", job_id, reason)
    time.sleep(REQUEUE_DELAY_S)
    try:
        with res.sessions() as session:
            dispatch_job(session, make_producer(res.settings), job_id, res.settings.job_queue)
    except DispatchError as exc:  # the reaper's dispatch sweep sends it later
        log.warning("could not send job %s back to the queue: %s", job_id, exc)
    return False


def _claim(res: JobResources, job_id: str, *, worker: str, lease_token: str) -> Any:
    """Claim the job; None when this delivery is a duplicate or the job no longer exists."""
    try:
        with res.sessions() as session:
            row = store_jobs.claim_job(session, job_id, worker=worker, lease_token=lease_token)
            session.commit()
    except JobNotFound:
        log.warning("job %s does not exist (deleted?); dropping the message", job_id)
        return None
    if row is None:
        log.warning("duplicate delivery of job %s (no longer QUEUED); dropping the message", job_id)
        return None
    with res.sessions() as session:
        store_jobs.record_code_version(session, job_id, lease_token=lease_token)
    _publish_state(res, job_id, JobState.RUNNING)
    return row


def _run_claimed(res: JobResources, row: Any, *, scratch: JobScratch, uploader: LogUploader, lease_token: str,
                 worker: str, capacity: WorkerCapacity) -> JobState | None:
    """Train under a lease and finish; the monitor thread runs for exactly this call."""
    job_id = str(row.id)
    s = res.settings
    sink = StoreSink(
        res.sessions, job_id, lease_token=lease_token, artifacts=res.artifacts, redis=res.redis,
        flush_interval_s=s.metrics_flush_interval_s, flush_max_points=s.metrics_flush_max_points,
        store_retry_deadline_s=s.store_retry_deadline_s, config_sha256=row.config_sha256,
    )
    announcer = CapacityAnnouncer(res.redis, worker, capacity)  # a busy worker stays in the live register

    def on_poll() -> None:
        sink.flush_if_due()
        announcer.refresh_if_due()

    monitor = JobMonitor(
        res.sessions, job_id, lease_token=lease_token, redis=res.redis,
        heartbeat_interval_s=s.heartbeat_interval_s, on_poll=on_poll,
    )
    monitor.start()
    uploader.start()  # restores the earlier attempts' log lines, then uploads the log every LOG_UPLOAD_INTERVAL_S
    try:
        outcome = _train(res, row, scratch=scratch, sink=sink, monitor=monitor, capacity=capacity)
    finally:
        monitor.stop()
    if outcome is None or monitor.lease_lost.is_set():
        log.error("lease lost: this attempt writes nothing more")
        return None
    return _finish(res, job_id, outcome=outcome, lease_token=lease_token)


def _train(res: JobResources, row: Any, *, scratch: JobScratch, sink: StoreSink, monitor: JobMonitor,
           capacity: WorkerCapacity) -> Outcome | None:
    """Run the trainer; map its result or exception to an Outcome (None = the lease was lost)."""
    job_id = str(row.id)
    if row.kind == JobKind.EVALUATION:
        return _evaluate(res, row, scratch=scratch, sink=sink, monitor=monitor)
    if row.kind == JobKind.SWEEP:
        return _sweep(res, row, sink=sink, monitor=monitor)
    exporting = ExportingSink(sink)
    try:
        stored, resources = stored_resources(row.kind, row.config)
        config = build_config(row.kind, stored)
        if config.debug.injects_faults and not res.settings.allow_fault_injection:
            log.error("refusing to run: %s", FAULT_INJECTION_REFUSED)
            return Outcome(JobState.FAILED, FailureReason.USER_CONFIG, FAULT_INJECTION_REFUSED)
        resume_from = _fetch_resume_checkpoint(res, job_id, scratch)
        # lazy: torch is imported in the child, never before fork
        from ris_model.train.jobs import run_training_job
        from worker.launcher import RankLost, RankSpec, rank_group

        hooks = training_hooks(config, stored)
        checkpoint_dir = scratch.checkpoint_dir
        # the other ranks need no init weights: DistributedDataParallel broadcasts rank 0's at construction
        init_weights = (initial_weights(config, sessions=res.sessions, artifacts=res.artifacts,
                                        inputs_dir=scratch.inputs_dir)
                        if resume_from is None else None)
        reporter = _open_exporters(res, row, config, exporting, scratch=scratch)
        spec = RankSpec(label=job_id, kind=row.kind, config=stored, checkpoint_dir=str(checkpoint_dir),
                        resume_from=str(resume_from) if resume_from is not None else None,
                        device=run_device(resources, capacity), world_size=resources.gpus)
        deadline = res.started_at + worker_deadline_s(res.settings)
        should_stop = make_should_stop(monitor, deadline=deadline)
        if reporter is not None:
            should_stop = reporter.should_stop(should_stop)
        try:
            with rank_group(spec) as group:
                try:
                    result = run_training_job(
                        config,
                        sink=exporting,
                        checkpoint_dir=checkpoint_dir,
                        device=str(group.device),
                        resume_from=resume_from,
                        should_stop=should_stop,
                        checkpoint_interval_s=res.settings.checkpoint_interval_s,
                        hooks=hooks,
                        init_weights=init_weights,
                        dist=group.context,
                    )
                except LeaseLost:
                    raise
                except Exception as exc:
                    raise TrainerFailed(exc) from exc
        except RankLost as exc:
            if monitor.lease_lost.is_set():
                return None
            return _rank_lost_outcome(row, exc, sink)
        sink.close()
        pruned = reporter is not None and reporter.pruned_at is not None and not monitor.cancel_requested.is_set()
        outcome = outcome_from_result(result, pruned_at=reporter.pruned_at if pruned and reporter else None)
        if outcome.state == JobState.SUCCEEDED:
            outcome = replace(outcome, report=_report_with_plots(res, job_id, row.kind, outcome.report))
        # the final checkpoint is still in the scratch directory (an exporter may upload it elsewhere too)
        final = Path(result.final_checkpoint.path) if result.final_checkpoint is not None else None
        exporting.finish(state=outcome.state, report=outcome.report, final_checkpoint=final)
        return outcome
    except Exception as exc:  # process boundary: every failure becomes a FAILED row
        if _is_lease_lost(exc) or monitor.lease_lost.is_set():
            return None
        outcome = _failed_outcome(exc, sink)
        try:
            exporting.finish(state=outcome.state, report=outcome.report, final_checkpoint=None)
        except Exception as finish_exc:  # the failure we report is the first one
            log.warning("could not finish the exports: %s", finish_exc)
        return outcome


def _open_exporters(res: JobResources, row: Any, config: TrainingJobConfig, exporting: ExportingSink, *,
                    scratch: JobScratch) -> TrialReporter | None:
    """Add the job's exporters to `exporting` (each failure to open one is logged and counted); returns the
    sweep trial's reporter when the job is a trial of a sweep."""
    job_id, s = str(row.id), res.settings
    exporting.open("tensorboard", lambda: _tensorboard(res, job_id, scratch))
    if s.mlflow_tracking_uri:
        exporting.open("mlflow", lambda: _mlflow(s.mlflow_tracking_uri or "", s.mlflow_experiment, row))
    if row.parent_id is None:
        return None
    with res.sessions() as session:
        sweep_config, _ = split_stored_config(store_jobs.get_job(session, row.parent_id, principal=WORKER).config)
    reporter = exporting.open("trial", lambda: open_trial_reporter(
        s.database_url, sweep_id=row.parent_id, sweep_config=sweep_config, tags=list(row.tags or []),
        config=config))
    return reporter if isinstance(reporter, TrialReporter) else None


def _tensorboard(res: JobResources, job_id: str, scratch: JobScratch) -> Any:
    from worker.tensorboard_export import TensorBoardExporter  # imports torch: only in the child

    return TensorBoardExporter(res.artifacts, job_id, scratch.dir)


def _mlflow(tracking_uri: str, experiment: str, row: Any) -> Any:
    from worker.mlflow_export import MlflowExporter  # imports mlflow: only when configured, in the child

    return MlflowExporter(tracking_uri, experiment, job_id=str(row.id), kind=row.kind, job_name=row.name,
                          config=split_stored_config(row.config)[0], tags=list(row.tags or []),
                          code_version=row.code_version)


def _sweep(res: JobResources, row: Any, *, sink: StoreSink, monitor: JobMonitor) -> Outcome | None:
    """Run a sweep's driver (worker/sweep.py) and map its result or exception to an Outcome."""
    try:
        config = SweepJobConfig.model_validate(split_stored_config(row.config)[0])
        job = SweepJob(id=str(row.id), name=row.name, owner=row.principal, tags=list(row.tags or []),
                       max_attempts=row.max_attempts)
        driver = SweepDriver(job, config, sessions=res.sessions, database_url=res.settings.database_url,
                             job_queue=res.settings.job_queue, producer=make_producer(res.settings),
                             redis=res.redis, sink=sink, poll_interval_s=res.settings.sweep_poll_interval_s)
        deadline = res.started_at + worker_deadline_s(res.settings)
        result = driver.run(make_should_stop(monitor, deadline=deadline))
        sink.close()
    except Exception as exc:  # process boundary, as in _train
        if _is_lease_lost(exc) or monitor.lease_lost.is_set():
            return None
        return _failed_outcome(exc, sink)
    if result.stopped == "cancel":
        return Outcome(JobState.CANCELLED, message="cancelled by request; its running trials were cancelled")
    if result.stopped == "timeout":
        return Outcome(JobState.FAILED, FailureReason.TIMEOUT,
                       "stopped at the worker's time limit; a new attempt would resume from the study")
    return Outcome(JobState.SUCCEEDED, report=result.report)


def _evaluate(res: JobResources, row: Any, *, scratch: JobScratch, sink: StoreSink,
              monitor: JobMonitor) -> Outcome | None:
    """Run an evaluation job (worker/evaluation.py) and map its result or exception to an Outcome."""
    job_id = str(row.id)
    try:
        deadline = res.started_at + worker_deadline_s(res.settings)
        result = run_evaluation_job(job_id, row.config, sessions=res.sessions, artifacts=res.artifacts,
                                    inputs_dir=scratch.inputs_dir, sink=sink,
                                    should_stop=make_should_stop(monitor, deadline=deadline))
        sink.close()
    except Exception as exc:  # process boundary, as in _train
        if _is_lease_lost(exc) or monitor.lease_lost.is_set():
            return None
        return _failed_outcome(exc, sink)
    return outcome_from_result(result)


def _rank_lost_outcome(row: Any, exc: BaseException, sink: StoreSink) -> Outcome:
    """A training process died: requeue the job for a new attempt (it resumes from its last checkpoint), or
    fail it WORKER_LOST when this was its last attempt."""
    with contextlib.suppress(Exception):  # what the sink still holds is worth keeping, not worth failing over
        sink.close()
    if row.attempt < row.max_attempts:
        message = f"{exc}; requeued for attempt {row.attempt + 1} of {row.max_attempts}"
        log.error("%s", message)
        return Outcome(JobState.QUEUED, message=message)
    log.error("%s (attempt %d of %d)", exc, row.attempt, row.max_attempts)
    return Outcome(JobState.FAILED, FailureReason.WORKER_LOST, f"{exc} (attempt {row.attempt} of {row.max_attempts})")


def _report_with_plots(res: JobResources, job_id: str, kind: str, report: dict[str, Any] | None
                       ) -> dict[str, Any] | None:
    """The report with the run's plots (worker/plots.py) listed under `artifacts`; a training job's report is
    these plots alone. Plots are an extra: when they cannot be made the job still succeeds, without them."""
    try:
        written = write_metric_plots(job_id, sessions=res.sessions, artifacts=res.artifacts)
    except Exception as exc:  # matplotlib or the disk: log it, keep the run's result
        log.warning("the run's plots could not be written: %s", exc)
        return report
    if not written:
        return report
    return {**(report or {"kind": kind}), "artifacts": [a.model_dump(mode="json") for a in written]}


def _failed_outcome(exc: BaseException, sink: StoreSink) -> Outcome:
    """Log the failure with its traceback tail, flush what the sink still holds, and build the Outcome."""
    reason = classify_failure(exc)
    message = failure_message(exc)
    log.error("job failed (%s): %s\n%s", reason.value, message, traceback_tail(exc))
    try:
        sink.close()
    except Exception as close_exc:  # the failure we report is the first one
        log.warning("could not flush the last metric points: %s", close_exc)
    return Outcome(JobState.FAILED, reason, message, report=_carried_report(exc))


def _carried_report(exc: BaseException) -> dict[str, Any] | None:
    """The report a failed run still carries: a diagnostic's verdict on NonFiniteAbort (`exc.report`)."""
    inner = exc.__cause__ if isinstance(exc, TrainerFailed) and exc.__cause__ is not None else exc
    report = getattr(inner, "report", None)
    return report if isinstance(report, dict) else None


def _is_lease_lost(exc: BaseException) -> bool:
    return isinstance(exc, LeaseLost) or isinstance(exc.__cause__, LeaseLost)


def training_hooks(config: TrainingJobConfig, stored: dict[str, Any]) -> StepHooks:
    """The StepHooks of a job: fault injection only for a job whose stored config has a `debug` section
    (every rank of a multi-process job builds the same). Raises UserInputRejected for an unusable one."""
    from ris_model.train.fault_hooks import DebugHooks
    from ris_model.train.hooks import NO_HOOKS

    try:
        return DebugHooks(config.debug) if "debug" in stored else NO_HOOKS
    except ValueError as exc:
        raise UserInputRejected(str(exc)) from exc


def build_config(kind: str, config: dict[str, Any]) -> TrainingJobConfig:
    """The config model of a stored job; raises pydantic ValidationError (→ USER_CONFIG) or ValueError."""
    if kind == JobKind.DIAGNOSTIC:
        return DiagnosticJobConfig.model_validate(config)
    if kind == JobKind.TRAINING:
        return TrainingJobConfig.model_validate(config)
    raise ValueError(f"job kind {kind!r} cannot run on a training worker")


def worker_deadline_s(settings: Settings) -> float:
    """Seconds after the task starts when the trainer is asked to stop ("timeout").

    The margin before Celery's soft limit leaves time for the stop checkpoint; the soft limit stays a backstop.
    """
    soft_s = float(settings.job_soft_time_limit_s)
    margin_s = min(60.0, 0.1 * soft_s)
    return soft_s - margin_s


def outcome_from_result(result: Any, *, pruned_at: int | None = None) -> Outcome:
    """SUCCEEDED / CANCELLED / CANCELLED PRUNED / FAILED TIMEOUT from a FitResult or an EvaluationResult
    (`stopped`, `report`; a training run also names its stop checkpoint).

    `pruned_at`: the run's epoch at which a sweep's pruner stopped the trial (its "cancel" was the pruner's).
    """
    if result.stopped == "cancel" and pruned_at is not None:
        step = result.last_checkpoint.step if result.last_checkpoint is not None else None
        message = (f"pruned by the sweep's pruner after epoch {pruned_at}; the stop checkpoint at step {step} is "
                   "kept")
        return Outcome(JobState.CANCELLED, FailureReason.PRUNED, message)
    if result.stopped == "cancel":
        return Outcome(JobState.CANCELLED, message="cancelled by request")
    if result.stopped == "timeout":
        message = "stopped at the worker's time limit"
        if hasattr(result, "last_checkpoint"):
            step = result.last_checkpoint.step if result.last_checkpoint is not None else None
            message += f"; stop checkpoint at step {step} is downloadable"
        return Outcome(JobState.FAILED, FailureReason.TIMEOUT, message)
    report = result.report
    if isinstance(report, BaseModel):
        report = report.model_dump(mode="json")
    return Outcome(JobState.SUCCEEDED, report=report)


def _fetch_resume_checkpoint(res: JobResources, job_id: str, scratch: JobScratch) -> Path | None:
    """The latest recorded checkpoint of an earlier attempt, downloaded from the artifact store into the scratch
    directory with its sha256 checked; None when there is none."""
    with res.sessions() as session:
        ckpt = store_queries.latest_resume_checkpoint(session, job_id)
        if ckpt is None:
            return None
        key, sha256, name = res.artifacts.job_key(job_id, ckpt.path), ckpt.sha256, ckpt.name
    dest = scratch.inputs_dir / f"resume-{name}.pt"
    res.artifacts.fetch(key, dest, sha256=sha256)
    log.info("resuming from checkpoint %s (%s, fetched from the artifact store)", name, key)
    return dest


def _finish(res: JobResources, job_id: str, *, outcome: Outcome, lease_token: str) -> JobState | None:
    """Write the terminal state (and report) in one fenced transaction, then publish it."""
    try:
        _write_outcome(res, job_id, outcome=outcome, lease_token=lease_token)
    except (InvalidTransition, LeaseLost) as exc:
        log.warning("terminal transition to %s refused (%s): the reaper or a cancel decided first", outcome.state, exc)
        return None
    except Exception as exc:  # process boundary: never leave the job RUNNING
        log.error("writing the outcome failed; marking the job FAILED INTERNAL\n%s", traceback_tail(exc))
        outcome = Outcome(JobState.FAILED, classify_failure(exc), failure_message(exc))
        try:
            _write_outcome(res, job_id, outcome=outcome, lease_token=lease_token)
        except Exception as second:  # noqa: BLE001 - last resort
            log.error("could not record the failure either (%s); the reaper will reap the lease", second)
            return None
    log.info("job %s finished: %s %s", job_id, outcome.state.value, outcome.failure_reason or "")
    _publish_state(res, job_id, outcome.state)
    if outcome.state is JobState.QUEUED:  # requeued: send it now rather than wait for the reaper's sweep
        try:
            with res.sessions() as session:
                dispatch_job(session, make_producer(res.settings), job_id, res.settings.job_queue)
        except DispatchError as exc:
            log.warning("could not send requeued job %s: %s; the reaper's sweep will", job_id, exc)
    return outcome.state


def _write_outcome(res: JobResources, job_id: str, *, outcome: Outcome, lease_token: str) -> None:
    """The report and the terminal state; retried while the database is unreachable (`worker.store_retry`).

    A retry first looks whether the attempt whose connection broke had committed the state (the lease is then
    cleared, so repeating the fenced transition would report LeaseLost for a write that succeeded)."""
    broken = False

    def note_failure(_exc: BaseException) -> None:
        nonlocal broken
        broken = True

    def write() -> None:
        with res.sessions() as session:
            if broken:
                job = store_jobs.get_job(session, job_id, principal=WORKER)
                if job.state == outcome.state.value and job.lease_token is None:
                    return
            if outcome.report is not None:
                store_jobs.set_report(session, job_id, outcome.report, lease_token=lease_token)
            store_jobs.transition(
                session, job_id, outcome.state, principal=WORKER, lease_token=lease_token,
                failure_reason=outcome.failure_reason, message=outcome.message,
            )
            session.commit()

    retry_store(write, what=f"terminal state {outcome.state.value} of job {job_id}",
                deadline_s=res.settings.store_retry_deadline_s, on_retry=note_failure)


def _publish_state(res: JobResources, job_id: str, state: JobState) -> None:
    try:
        live.publish_state(res.redis, job_id, state)
    except RedisError as exc:  # SSE clients also poll the row; Redis is never the truth
        log.warning("live publish of state %s failed: %s", state.value, exc)


@contextlib.contextmanager
def job_log(path: Path) -> Iterator[None]:
    """Send INFO records of the worker and ris_model loggers to the job's log file for the block's duration.

    If the scratch directory cannot take the log (full, read-only, not a directory), the job still runs with
    its records on the worker's own log only: its first checkpoint then fails it FAILED(INTERNAL) with the
    storage error as the reason, instead of the task dying with the job left RUNNING for the reaper.
    The file is the job's scratch log; `LogUploader` copies it to the artifact store.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        log.error("cannot open the job log %s (%s); logging to the worker's output only", path, exc)
        yield
        return
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in JOB_LOGGERS]
    saved_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
