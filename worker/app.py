"""The Celery app of ris-jobs and its configuration (ARCHITECTURE.md, "The life of a job").

Owns: `app` (what `celery -A worker.app worker` loads) and `configure_app(app, settings)`.
Must not import torch, CUDA or ris_model: a prefork parent that initialised CUDA cannot fork usable children
(celery#3402, pytorch#40403), so the task body imports ris_model lazily.

Why each setting:
- acks_late + reject_on_worker_lost: a killed child leaves its message in the broker (at-least-once); the
  job row's claim is the dedupe, so a redelivered message for a job that is no longer QUEUED is dropped.
- prefetch 1, concurrency 1, max_tasks_per_child 1: a worker reserves only the job it runs, and every job gets
  a fresh child (frees CUDA memory; a revoke(terminate=True) can only ever hit that one job).
- visibility_timeout > hard time limit, in all three places Celery reads it: otherwise Redis redelivers a
  long job's message to a second worker while the first still runs (celery#5935, kombu#337).
- task_ignore_result: the job table is the truth; we never read Celery results.
- broker priority options (server.dispatch.BROKER_PRIORITY_OPTIONS), the same as the producer's: one Redis list
  per priority step, popped most urgent first. Which queues a worker consumes (`<JOB_QUEUE>.gpu`,
  `<JOB_QUEUE>.cpu`) is its `-Q` option (`ris-jobs worker --queues`); no message goes to a default queue.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from server.dispatch import BROKER_PRIORITY_OPTIONS, job_queue_name
from server.settings import Settings, get_settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for `settings` (a plain dict, so tests can read it)."""
    hard_s = int(settings.job_hard_time_limit_s)
    visibility_s = int(settings.broker_visibility_timeout_s)  # > hard_s, so Redis never redelivers a live job
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": visibility_s, **BROKER_PRIORITY_OPTIONS},
        "result_backend_transport_options": {"visibility_timeout": visibility_s},
        "visibility_timeout": visibility_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": hard_s,
        "task_soft_time_limit": int(settings.job_soft_time_limit_s),
        "task_default_queue": job_queue_name(settings.job_queue, "gpu"),
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": 1,
        "worker_pool": "prefork",
        "worker_soft_shutdown_timeout": 60.0,
    }


def configure_app(celery_app: Celery, settings: Settings) -> Celery:
    """Apply `settings` to `celery_app` (call before the worker or any producer connects)."""
    celery_app.conf.update(celery_config(settings))
    return celery_app


def make_celery_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app that knows the `run_job` task (registered by importing worker.tasks)."""
    celery_app = Celery("ris_jobs", include=["worker.tasks"])
    return configure_app(celery_app, settings or get_settings())


app = make_celery_app()
