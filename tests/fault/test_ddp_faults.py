"""Multi-process jobs through a real prefork Celery worker (CPU, two gloo processes per job): a rank killed
mid-job requeues the job, which resumes and finishes; a cancel ends every rank; a job asking more than any
live worker has stays QUEUED with its reason while the worker keeps running other jobs. After each, no
training process of the job is left (docs/ARCHITECTURE.md "Multi-GPU training")."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from api_schemas import JobState, Resources, stored_config
from server.store.job_queries import list_events
from server.store.jobs import request_cancel
from server.store.principals import ADMIN
from tests.fault.conftest import Service, audit, slow_training_config, wait_for
from tests.worker.test_launcher import rank_pids

pytestmark = [pytest.mark.fault, pytest.mark.distributed]

TWO_CPU_PROCESSES = Resources(gpus=2, device="cpu")


def two_process_config(epochs: int) -> dict[str, Any]:
    """slow_training_config as a 2-process job: 64 scenes a epoch in 2 steps of 2 x 16 scenes."""
    return stored_config(slow_training_config(epochs=epochs, sleep_per_step_s=0.2), TWO_CPU_PROCESSES)


def _running_ranks(svc: Service, job_id: str) -> list[int]:
    def ranks() -> list[int] | None:
        job = svc.job(job_id)
        assert job.state in (JobState.QUEUED, JobState.RUNNING), f"job ended {job.state}: {job.failure_message}"
        return rank_pids(job_id) or None

    return wait_for("rank 1 of the job running", ranks, deadline_s=90)


def _messages(svc: Service, job_id: str) -> list[str]:
    with svc.sessions() as s:
        return [e.message or "" for e in list_events(s, job_id, principal=ADMIN)]


def test_a_killed_rank_requeues_the_job_which_resumes_and_finishes(service: Service) -> None:
    job_id = service.submit(two_process_config(epochs=8), max_attempts=2)
    service.start_worker("w-ddp")
    wait_for("a first checkpoint", lambda: service.job(job_id).step >= 2, deadline_s=90)
    [rank_1] = _running_ranks(service, job_id)
    os.kill(rank_1, signal.SIGKILL)
    job = service.wait_terminal(job_id, deadline_s=180)
    assert (job.state, job.attempt) == (JobState.SUCCEEDED, 2), job.failure_message
    assert any("rank 1 of 2 was killed by SIGKILL" in m and "requeued for attempt 2 of 2" in m
               for m in _messages(service, job_id))
    assert rank_pids(job_id) == []
    audit(service, job_id).assert_none()


def test_a_killed_rank_on_the_last_attempt_fails_the_job_worker_lost(service: Service) -> None:
    job_id = service.submit(two_process_config(epochs=8), max_attempts=1)
    service.start_worker("w-ddp")
    [rank_1] = _running_ranks(service, job_id)
    os.kill(rank_1, signal.SIGKILL)
    job = service.wait_terminal(job_id, deadline_s=120)
    assert (job.state, job.failure_reason) == (JobState.FAILED, "WORKER_LOST")
    assert "rank 1 of 2 was killed by SIGKILL" in job.failure_message
    assert rank_pids(job_id) == []


def test_cancel_ends_every_rank(service: Service) -> None:
    job_id = service.submit(two_process_config(epochs=40))
    service.start_worker("w-ddp")
    assert _running_ranks(service, job_id)
    with service.sessions() as s:
        request_cancel(s, job_id, principal=ADMIN)  # CANCELLING: rank 0 sees it; every rank stops together
    job = service.wait_terminal(job_id, deadline_s=120)
    assert job.state == JobState.CANCELLED
    assert rank_pids(job_id) == []


def test_a_job_larger_than_every_live_worker_waits_queued_with_its_reason(service: Service) -> None:
    big = service.submit(stored_config(slow_training_config(epochs=1), Resources(gpus=2, device="cuda")))
    service.start_worker("w-cpu")

    def reason() -> str | None:
        return next((m for m in _messages(service, big) if "no live worker can run it" in m), None)

    text = wait_for("the waiting reason", reason, deadline_s=90)
    assert "it needs 2 GPUs; this worker has 0" in text
    small = service.submit(slow_training_config(epochs=1, sleep_per_step_s=0.0))
    assert service.wait_terminal(small, deadline_s=120).state == JobState.SUCCEEDED  # the worker is not stuck
    job = service.job(big)
    assert (job.state, job.attempt) == (JobState.QUEUED, 1)
    assert sum("no live worker can run it" in m for m in _messages(service, big)) == 1  # once per reason
