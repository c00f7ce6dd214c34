"""The reaper: requeue or fail jobs whose worker died, re-dispatch lost messages, escalate cancels (ARCHITECTURE.md,
"The job state machine").

Owns: `Reaper` (one sweep = `reap_once()`), the module-level `reap_once()` for tests and `run_reaper()` (the
loop of `ris-jobs reaper`). Imports no torch.

One sweep:
1. `store.jobs.reap_expired` — RUNNING jobs whose lease expired go back to QUEUED (attempt + 1; the next attempt
   resumes from the latest checkpoint) or to FAILED(WORKER_LOST); CANCELLING jobs whose worker died, or that
   ignored the cancel for CANCEL_GRACE_S, become CANCELLED. Each requeued job gets a new message
   (`server.dispatch.dispatch_job`, which records the task id).
2. Re-dispatch: a job QUEUED for longer than REDISPATCH_AFTER_S whose id is in no *live* broker message gets
   a new one. This covers an enqueue that failed while Redis was down (no task id recorded) and messages lost
   when Redis restarted without persistence (task id recorded, message gone). A message is live if it waits
   in the queue's Redis lists, or if a worker received it (kombu's `unacked` hash) less than
   `redispatch_after_s` ago — a worker that got a message and did not claim its job within that time died.
3. Unserved queues: a QUEUED job whose device queue (`gpu`, `cpu`) no live worker consumes gets its waiting
   reason ("waiting for a cuda worker: …") as a QUEUED → QUEUED event, shown as JobPublic.waiting_reason
   (worker/capacity.py keeps the register of live workers and what they serve).
4. Orphaned artifact objects (worker/artifact_sweep.py), every ARTIFACT_SWEEP_INTERVAL_S: temporary keys of
   writes that never committed, checkpoint objects no record points at, objects of deleted jobs — each only
   once older than ORPHAN_GRACE_S.
5. Last resort for a wedged cancel: after the store escalated CANCELLING → CANCELLED, the worker's heartbeat
   and every fenced write fail with LeaseLost, which stops a trainer that polls `should_stop` or logs metrics.
   If, one more grace period later, a worker still executes that job's task (`inspect().active()`, matched by
   the job id in its args), the reaper calls `revoke(task_id, terminate=True)` for that task id only; workers
   run `-c 1 --max-tasks-per-child=1`, so that process runs nothing else.

Why a job never runs twice: the claim in the task is a conditional UPDATE QUEUED → RUNNING with a new lease
token, and every later write is fenced by that token. Any extra message — Redis redelivery of a dead worker's
message, a re-dispatch that raced with a slow delivery — finds the job RUNNING or finished and is dropped;
an attempt whose lease the reaper took away can write nothing more. Extra messages cost one dropped delivery,
never a second execution of the same attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

from celery import Celery
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import JobState, split_stored_config
from server.dispatch import (
    RUN_JOB_TASK,
    DispatchError,
    all_job_queues,
    dispatch_job,
    make_producer,
    queue_keys,
    sweep_queue,
)
from server.settings import Settings, get_settings
from server.store import job_queries as store_queries
from server.store import jobs as store_jobs
from server.store.db import make_engine, make_session_factory, utcnow
from server.store.files import ArtifactStore
from server.store.jobs import ReapOutcome
from server.store.principals import REAPER
from worker.artifact_sweep import sweep_orphans
from worker.capacity import live_capacities, queue_waiting_reason

log = logging.getLogger(__name__)

#: kombu's Redis transport: the hash of delivered-but-unacked messages and its delivery-time index. The waiting
#: messages of a queue lie in one list per priority step (server.dispatch.queue_keys).
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


@dataclass
class ReapReport:
    """What one sweep did, by job id."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    #: artifact-store keys removed as orphans
    orphans_removed: list[str] = field(default_factory=list)
    #: jobs that got a new waiting reason (their queue has no live worker)
    waiting: list[str] = field(default_factory=list)


class Reaper:
    """Sweeps the job store; keeps, between sweeps, only the escalated cancels awaiting a last-resort check."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session],
        producer: Celery,
        redis: Redis,
        artifacts: ArtifactStore | None = None,
        redispatch_after_s: float | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._producer = producer
        self._redis = redis
        #: a live worker claims a delivered job within seconds; REDISPATCH_AFTER_S is generous on purpose
        self._redispatch_after_s = settings.redispatch_after_s if redispatch_after_s is None else redispatch_after_s
        #: job id -> monotonic time the sweep escalated its cancel (for the last-resort terminate)
        self._escalated: dict[str, float] = {}
        self._artifacts = artifacts if artifacts is not None else ArtifactStore(settings.artifact_location)
        self._next_artifact_sweep = 0.0  # monotonic; the first sweep looks at once

    def reap_once(self) -> ReapReport:
        """One sweep: expired leases, lost messages, escalated cancels."""
        report = ReapReport()
        self._reap_expired(report)
        self._redispatch_lost(report)
        self._note_unserved(report)
        self._sweep_artifacts(report)
        self._terminate_wedged(report)
        return report

    # -- 1. expired leases and cancel grace --

    def _reap_expired(self, report: ReapReport) -> None:
        with self._sessions() as session:
            actions = store_jobs.reap_expired(
                session,
                lease_timeout_s=self._settings.lease_timeout_s,
                cancel_grace_s=self._settings.cancel_grace_s,
            )
        for action in actions:
            if action.outcome is ReapOutcome.REQUEUED:
                log.warning("job %s: lease expired; requeued for attempt %d", action.job_id, action.attempt + 1)
                self._enqueue(action.job_id)
                report.requeued.append(action.job_id)
            elif action.outcome is ReapOutcome.FAILED_WORKER_LOST:
                log.warning("job %s: lease expired, no attempts left; FAILED WORKER_LOST", action.job_id)
                report.failed.append(action.job_id)
            elif action.outcome is ReapOutcome.CANCELLED_WORKER_LOST:
                log.warning("job %s: worker lost while cancelling; CANCELLED", action.job_id)
                report.cancelled.append(action.job_id)
            else:  # CANCELLED_GRACE_EXPIRED: the worker still heartbeats; its fenced writes now fail
                log.warning("job %s: cancel not honoured within %.0f s; CANCELLED", action.job_id,
                            self._settings.cancel_grace_s)
                self._escalated[action.job_id] = time.monotonic()
                report.cancelled.append(action.job_id)

    # -- 2. QUEUED jobs without a live message --

    def _redispatch_lost(self, report: ReapReport) -> None:
        stale = self._stale_queued_ids()
        if not stale:
            return
        try:
            live = self._live_message_bodies()
        except RedisError as exc:
            log.warning("cannot read the broker (%s); re-dispatch check skipped this sweep", exc)
            return
        for job_id in stale:
            if any(job_id.encode() in body for body in live):
                continue
            log.warning("job %s QUEUED for > %.0f s with no live message; re-dispatching", job_id,
                        self._redispatch_after_s)
            self._enqueue(job_id)
            report.redispatched.append(job_id)

    def _stale_queued_ids(self) -> list[str]:
        """Ids of jobs QUEUED (since creation or requeue) for longer than `redispatch_after_s`."""
        cutoff = utcnow() - timedelta(seconds=self._redispatch_after_s)
        stale: list[str] = []
        page_token: str | None = None
        with self._sessions() as session:
            while True:
                page = store_queries.list_jobs(session, principal=REAPER, state=JobState.QUEUED, limit=500,
                                               page_token=page_token)
                stale.extend(job.id for job in page.jobs if job.queued_at < cutoff)
                page_token = page.next_page_token
                if page_token is None:
                    return stale

    def _live_message_bodies(self) -> list[bytes]:
        """Raw messages waiting in the job queues (every device queue and the sweep drivers' queue, every priority
        list), then those delivered recently (order matters: a message moves from a list to the unacked hash, so
        reading the lists first cannot miss it in both)."""
        queues = [*all_job_queues(self._settings.job_queue), sweep_queue(self._settings.job_queue)]
        keys = [key for queue in queues for key in queue_keys(queue)]
        bodies: list[bytes] = []
        for key in keys:
            bodies.extend(cast(list[bytes], self._redis.lrange(key, 0, -1)))  # no decode_responses: bytes
        recent_since = time.time() - self._redispatch_after_s
        tags = cast(list[bytes], self._redis.zrangebyscore(UNACKED_INDEX_KEY, recent_since, "+inf"))
        if tags:
            unacked = cast(list[bytes | None], self._redis.hmget(UNACKED_KEY, tags))
            bodies.extend(b for b in unacked if b is not None)
        return bodies

    # -- 3. QUEUED jobs that no live worker serves --

    def _note_unserved(self, report: ReapReport) -> None:
        live = live_capacities(self._redis)
        with self._sessions() as session:
            page = store_queries.list_jobs(session, principal=REAPER, state=JobState.QUEUED, limit=500)
            for job in page.jobs:
                _, resources = split_stored_config(job.config)
                reason = queue_waiting_reason(resources, live)
                if reason is not None and store_jobs.note_waiting(session, job.id, reason):
                    log.info("job %s stays QUEUED: %s", job.id, reason)
                    report.waiting.append(job.id)

    # -- 4. orphaned artifact objects --

    def _sweep_artifacts(self, report: ReapReport) -> None:
        if time.monotonic() < self._next_artifact_sweep:
            return
        self._next_artifact_sweep = time.monotonic() + self._settings.artifact_sweep_interval_s
        try:
            swept = sweep_orphans(self._artifacts, self._sessions, older_than_s=self._settings.orphan_grace_s)
        except Exception as exc:  # the store may be down; the jobs' sweep above must not depend on it
            log.warning("artifact orphan sweep failed: %s", exc)
            return
        report.orphans_removed.extend(swept.removed)

    # -- 5. last resort for wedged cancels --

    def _terminate_wedged(self, report: ReapReport) -> None:
        for job_id, escalated_at in list(self._escalated.items()):
            if time.monotonic() - escalated_at < self._settings.cancel_grace_s:
                continue
            del self._escalated[job_id]
            task_id = self._active_task_id(job_id)
            if task_id is None:
                continue
            log.error("job %s: task %s still runs a grace period after CANCELLED; terminating it", job_id, task_id)
            self._producer.control.revoke(task_id, terminate=True, signal="SIGKILL")
            report.terminated.append(job_id)

    def _active_task_id(self, job_id: str) -> str | None:
        """The id of a `run_job` task for `job_id` that some worker is executing now, or None."""
        active = self._producer.control.inspect(timeout=2.0).active() or {}
        for tasks in active.values():
            for task in tasks:
                if task.get("name") == RUN_JOB_TASK and job_id in (task.get("args") or []):
                    return str(task["id"])
        return None

    def _enqueue(self, job_id: str) -> None:
        """Send a new message for `job_id` and record its task id; a broker error leaves it to a later sweep."""
        try:
            with self._sessions() as session:
                dispatch_job(session, self._producer, job_id, self._settings.job_queue)
        except DispatchError as exc:
            log.warning("%s; a later sweep re-dispatches it", exc)


def make_reaper(settings: Settings) -> Reaper:
    """A Reaper with its own engine, producer and Redis client."""
    engine = make_engine(settings.database_url)
    return Reaper(
        settings,
        sessions=make_session_factory(engine),
        producer=make_producer(settings),
        redis=Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0),
        artifacts=ArtifactStore(settings.artifact_location),
    )


def reap_once(settings: Settings | None = None) -> ReapReport:
    """One sweep with a fresh Reaper (tests; escalations are not remembered across calls)."""
    return make_reaper(settings or get_settings()).reap_once()


def run_reaper(settings: Settings, *, stop: threading.Event) -> None:
    """Sweep every REAPER_INTERVAL_S until `stop` is set; a failed sweep is logged and retried."""
    reaper = make_reaper(settings)
    log.info("reaper started (interval %.1f s, lease timeout %.1f s)", settings.reaper_interval_s,
             settings.lease_timeout_s)
    while not stop.is_set():
        try:
            report = reaper.reap_once()
            if any(vars(report).values()):
                log.info("reaper sweep: %s", report)
        except Exception as exc:  # process boundary: the loop must outlive a DB or Redis outage
            log.exception("reaper sweep failed: %s", exc)
        stop.wait(settings.reaper_interval_s)
