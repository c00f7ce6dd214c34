"""Sending job ids to the GPU workers' Celery queue (DESIGN §3.4, STYLE B7; docs/CONTRACTS.md).

Owns: `RUN_JOB_TASK`, a producer-only Celery app built from Settings, `enqueue_job`, `queue_for` (a `sweep`
job's driver goes to `<JOB_QUEUE>.sweeps`, which a CPU worker consumes, so that it never holds a GPU worker
while its trials wait for one) and `dispatch_pending` (the sweep that re-sends QUEUED jobs whose first enqueue
failed). Must not import FastAPI, torch or worker/:
the task is sent by name.

Order (Celery "Database transactions"): the QUEUED row is committed first, then the id alone is enqueued.
"""

from __future__ import annotations

import logging
import uuid

import kombu.exceptions
import redis.exceptions
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import JobKind
from server.settings import Settings
from server.store.job_queries import list_undispatched
from server.store.jobs import get_job, record_dispatch
from server.store.principals import DISPATCHER

#: The task name the worker registers (worker/tasks.py); the API sends it by name.
RUN_JOB_TASK = "ris_jobs.run_job"
#: Appended to JOB_QUEUE: the queue of the sweep drivers.
SWEEP_QUEUE_SUFFIX = ".sweeps"

log = logging.getLogger(__name__)


class DispatchError(Exception):
    """The broker could not take the message (Redis down); the job stays QUEUED for a later sweep."""


def make_producer(settings: Settings) -> Celery:
    """A Celery app that only sends: broker = REDIS_URL, JSON, short retries so a request never hangs."""
    app = Celery("ris_jobs_producer", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=False,
        broker_connection_timeout=2.0,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5},
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
        },
    )
    return app


def enqueue_job(producer: Celery, job_id: str, queue: str) -> str:
    """Send `RUN_JOB_TASK(job_id)` to `queue`; returns the Celery task id.

    Raises:
        DispatchError: the broker is unreachable (after a few short retries).
    """
    task_id = str(uuid.uuid4())
    try:
        producer.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue, task_id=task_id)
    except (kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError) as exc:
        raise DispatchError(f"could not enqueue job {job_id} on {queue!r}: {exc}") from exc
    return task_id


def sweep_queue(job_queue: str) -> str:
    """The queue of the sweep drivers that go with the job queue `job_queue`."""
    return f"{job_queue}{SWEEP_QUEUE_SUFFIX}"


def queue_for(kind: str, job_queue: str) -> str:
    """Where a job of `kind` is sent: sweeps to their drivers' queue, every other job to `job_queue`."""
    return sweep_queue(job_queue) if kind == JobKind.SWEEP else job_queue


def dispatch_job(session: Session, producer: Celery, job_id: str, queue: str) -> str:
    """Enqueue a committed QUEUED job on `queue` (or its sweep queue, see `queue_for`) and record its task id
    (commits). Raises DispatchError."""
    kind = get_job(session, job_id, principal=DISPATCHER).kind
    task_id = enqueue_job(producer, job_id, queue_for(kind, queue))
    record_dispatch(session, job_id, celery_task_id=task_id)
    return task_id


def dispatch_pending(
    session_factory: sessionmaker[Session], producer: Celery, queue: str, *, older_than_s: float
) -> list[str]:
    """Re-send QUEUED jobs that have no Celery message yet (enqueue failed, or a requeue was not sent).

    A job is swept once it has waited `older_than_s` seconds, so a request that is still enqueueing is
    left alone; a duplicate message is harmless anyway (the claim drops it). Stops at the first broker
    error. Returns the ids sent.
    """
    sent: list[str] = []
    with session_factory() as session:
        for job_id in list_undispatched(session, older_than_s=older_than_s):
            try:
                dispatch_job(session, producer, job_id, queue)
            except DispatchError as exc:
                log.warning("dispatch sweep stopped: %s", exc)
                break
            sent.append(job_id)
    return sent
