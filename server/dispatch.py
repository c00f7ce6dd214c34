"""Sending job ids to the workers' Celery queues (ARCHITECTURE.md, "The life of a job"; docs/CONTRACTS.md).

Owns: `RUN_JOB_TASK`, the queue names (`<JOB_QUEUE>.gpu`, `<JOB_QUEUE>.cpu`: `job_queue_name`; a `sweep` job's
driver goes to `<JOB_QUEUE>.sweeps`: `sweep_queue`, `queue_for`, which a CPU worker consumes, so that it never holds
a GPU worker while its trials wait for one), the broker's priority options and key layout
(`BROKER_PRIORITY_OPTIONS`, `broker_priority`, `queue_keys`, `queue_depth`), a producer-only Celery app built from
Settings, `enqueue_job`, `dispatch_job` (queue and priority from the job's row) and `dispatch_pending` (the sweep
that re-sends QUEUED jobs whose first enqueue failed). Must not import FastAPI, torch or worker/: the task is sent
by name.

Priorities: kombu's Redis transport keeps one list per priority step, `<queue>` for step 0 and
`<queue>:<step>` for steps 1..9, and a worker pops them in step order, so step 0 is delivered first. A job's
priority (0..9, 9 the most urgent) is sent as step 9 - priority. Producer and workers must use the same
options, or they would name the lists differently: both take BROKER_PRIORITY_OPTIONS.

Order (Celery "Database transactions"): the QUEUED row is committed first, then the id alone is enqueued.
"""

from __future__ import annotations

import logging
import uuid

import kombu.exceptions
import redis.exceptions
from celery import Celery
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import (
    DEFAULT_PRIORITY,
    DEVICE_QUEUES,
    JobKind,
    Resources,
    device_queue,
    split_stored_config,
    stored_priority,
)
from api_schemas.resources import MAX_PRIORITY, DeviceQueue
from server.settings import Settings
from server.store.job_queries import list_undispatched
from server.store.jobs import get_job, record_dispatch
from server.store.principals import DISPATCHER

#: The task name the worker registers (worker/tasks.py); the API sends it by name.
RUN_JOB_TASK = "ris_jobs.run_job"
#: Appended to JOB_QUEUE: the queue of the sweep drivers.
SWEEP_QUEUE_SUFFIX = ".sweeps"

log = logging.getLogger(__name__)

#: kombu Redis transport options shared by producer and workers: ten priority steps, one list per step named
#: `<queue>:<step>` (step 0: `<queue>`), popped in step order.
PRIORITY_SEP = ":"
PRIORITY_STEPS = tuple(range(10))
BROKER_PRIORITY_OPTIONS: dict[str, object] = {
    "priority_steps": list(PRIORITY_STEPS), "sep": PRIORITY_SEP, "queue_order_strategy": "priority",
}


def job_queue_name(prefix: str, queue: DeviceQueue) -> str:
    """The Celery queue of one device queue: `<JOB_QUEUE>.gpu` or `<JOB_QUEUE>.cpu`."""
    return f"{prefix}.{queue}"


def all_job_queues(prefix: str) -> list[str]:
    return [job_queue_name(prefix, q) for q in DEVICE_QUEUES]


def broker_priority(priority: int) -> int:
    """The kombu priority step of a job priority: 9 (most urgent) → step 0 (popped first)."""
    return MAX_PRIORITY - priority


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a queue's waiting messages, most urgent first."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_depth(redis: Redis, queue: str) -> int:
    """Messages waiting in `queue`, all priorities."""
    pipe = redis.pipeline(transaction=False)
    for key in queue_keys(queue):
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


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
            **BROKER_PRIORITY_OPTIONS,
        },
    )
    return app


def enqueue_job(producer: Celery, job_id: str, queue: str, *, priority: int = DEFAULT_PRIORITY) -> str:
    """Send `RUN_JOB_TASK(job_id)` to `queue` (the full Celery queue name) with a job priority (0..9, 9 the
    most urgent); returns the Celery task id.

    Raises:
        DispatchError: the broker is unreachable (after a few short retries).
    """
    task_id = str(uuid.uuid4())
    try:
        producer.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue, task_id=task_id,
                           priority=broker_priority(priority))
    except (kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError) as exc:
        raise DispatchError(f"could not enqueue job {job_id} on {queue!r}: {exc}") from exc
    return task_id


def sweep_queue(prefix: str) -> str:
    """The queue of the sweep drivers that go with the job queues `prefix`: `<JOB_QUEUE>.sweeps`."""
    return f"{prefix}{SWEEP_QUEUE_SUFFIX}"


def queue_for(kind: str, resources: Resources, prefix: str) -> str:
    """Where a job is sent: a sweep's driver to `<prefix>.sweeps`, every other job to the device queue of its
    resources (`<prefix>.gpu|cpu`)."""
    if kind == JobKind.SWEEP:
        return sweep_queue(prefix)
    return job_queue_name(prefix, device_queue(resources))


def dispatch_job(session: Session, producer: Celery, job_id: str, queue_prefix: str) -> str:
    """Enqueue a committed QUEUED job on its queue (`queue_for`: `<queue_prefix>.gpu|cpu` from its resources, or
    `<queue_prefix>.sweeps` for a sweep's driver) with its priority, and record its task id (commits). Raises
    DispatchError, JobNotFound."""
    job = get_job(session, job_id, principal=DISPATCHER)
    _, resources = split_stored_config(job.config)
    queue = queue_for(job.kind, resources, queue_prefix)
    task_id = enqueue_job(producer, job_id, queue, priority=stored_priority(job.config))
    record_dispatch(session, job_id, celery_task_id=task_id)
    return task_id


def dispatch_pending(
    session_factory: sessionmaker[Session], producer: Celery, queue_prefix: str, *, older_than_s: float
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
                dispatch_job(session, producer, job_id, queue_prefix)
            except DispatchError as exc:
                log.warning("dispatch sweep stopped: %s", exc)
                break
            sent.append(job_id)
    return sent
