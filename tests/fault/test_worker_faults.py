"""Real processes, real failures: SIGKILL a worker mid-job, repeatedly and at random
points; a job with one attempt; the same message delivered twice.

RIS_FAULT_KILLS (default 3) sets how many kills the repeated test injects; the evidence run used 20.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest

from api_schemas import JobState, split_stored_config
from server.dispatch import enqueue_job, make_producer, queue_for
from server.store.job_queries import list_events
from server.store.jobs import get_job
from server.store.principals import ADMIN
from tests.fault.conftest import (
    Losses,
    Service,
    acknowledged,
    audit,
    slow_training_config,
    train_loss_steps,
    wait_for,
)

pytestmark = pytest.mark.fault

N_KILLS = int(os.environ.get("RIS_FAULT_KILLS", "3"))


def _latest_checkpoint_step(svc: Service, job_id: str, min_step: int = 1) -> int | None:
    steps = [step for step, _ in acknowledged(svc, job_id).checkpoints.values()]
    return max(steps) if steps and max(steps) >= min_step else None


def _kill_mid_job(svc: Service, job_id: str, worker: Any, *, delay_s: float = 0.0) -> float:
    """Once the job runs and a checkpoint exists, wait `delay_s` more, SIGKILL the worker; returns the time."""
    svc.wait_state(job_id, JobState.RUNNING)

    def checkpointed() -> int | None:
        job = svc.job(job_id)
        assert job.state == JobState.RUNNING, f"job ended {job.state} before the kill: {job.failure_message}"
        return _latest_checkpoint_step(svc, job_id)

    wait_for("a first checkpoint", checkpointed)
    time.sleep(delay_s)
    assert svc.job(job_id).state == JobState.RUNNING, "the job ended before the kill: make it longer"
    svc.kill(worker)
    return time.monotonic()


def _wait_reclaimed(svc: Service, job_id: str) -> None:
    wait_for("attempt 2 claimed", lambda: (j := svc.job(job_id)).attempt == 2 and j.state != JobState.QUEUED,
             deadline_s=60)


def _check_resumed(svc: Service, job_id: str, *, resume_step: int, last_seq_before: int) -> None:
    """Attempt 2 logged its first training step right after the checkpoint it resumed from, and the job's
    train/loss steps cover 1..last with no hole (steps after the checkpoint that attempt 1 logged are replayed)."""
    steps = train_loss_steps(svc, job_id)
    with svc.sessions() as s:
        from server.store.models import MetricRow

        after = [r.step for r in s.query(MetricRow).filter(
            MetricRow.job_id == job_id, MetricRow.key == "train/loss", MetricRow.seq > last_seq_before)]
    assert after, "attempt 2 logged training steps"
    assert min(after) == resume_step + 1, f"attempt 2 started at step {min(after)}, checkpoint was {resume_step}"
    assert set(steps) == set(range(1, max(steps) + 1)), "a training step is missing from the metric history"


def test_sigkilled_worker_job_is_requeued_and_resumes_from_checkpoint(service: Service, evidence: Any) -> None:
    job_id = service.submit(slow_training_config(epochs=6))
    first = service.start_worker("w1")
    service.start_reaper()
    killed_at = _kill_mid_job(service, job_id, first)
    before = acknowledged(service, job_id)
    resume_step = max(step for step, _ in before.checkpoints.values())

    service.start_worker("w2")
    _wait_reclaimed(service, job_id)
    recovery_s = time.monotonic() - killed_at
    final = service.wait_terminal(job_id)
    assert final.state == JobState.SUCCEEDED, final.failure_message
    assert final.attempt == 2
    _check_resumed(service, job_id, resume_step=resume_step, last_seq_before=max(before.points))
    assert "resuming from checkpoint" in service.log_text_of_job(job_id)
    losses = audit(service, job_id, before)
    losses.assert_none()
    evidence("SIGKILL worker mid-job (resume)", 1, losses, [recovery_s])


def test_repeated_sigkills_at_random_points_lose_nothing(service: Service, evidence: Any) -> None:
    rng = random.Random(int(os.environ.get("RIS_FAULT_SEED", "7")))
    service.start_reaper()
    worker = service.start_worker("w0")
    total, recoveries = Losses(), []
    for i in range(N_KILLS):
        job_id = service.submit(slow_training_config(epochs=6))
        killed_at = _kill_mid_job(service, job_id, worker, delay_s=rng.uniform(0.0, 1.5))
        worker = service.start_worker(f"w{i + 1}")  # the replacement machine
        before = acknowledged(service, job_id)  # the dead attempt can write nothing more
        resume_step = max(step for step, _ in before.checkpoints.values())
        _wait_reclaimed(service, job_id)
        recoveries.append(time.monotonic() - killed_at)
        final = service.wait_terminal(job_id)
        assert final.state == JobState.SUCCEEDED, final.failure_message
        _check_resumed(service, job_id, resume_step=resume_step, last_seq_before=max(before.points))
        total.add(audit(service, job_id, before))
    print(f"\n{N_KILLS} kills; losses {total}; recovery s {[round(r, 2) for r in recoveries]}")
    evidence("SIGKILL worker at a random point after the first checkpoint", N_KILLS, total, recoveries)
    total.assert_none()


def test_sigkilled_worker_with_one_attempt_fails_worker_lost(service: Service, evidence: Any) -> None:
    job_id = service.submit(slow_training_config(epochs=6), max_attempts=1)
    worker = service.start_worker("w1")
    service.start_reaper()
    killed_at = _kill_mid_job(service, job_id, worker)
    before = acknowledged(service, job_id)
    final = service.wait_state(job_id, JobState.FAILED, JobState.SUCCEEDED, JobState.CANCELLED, deadline_s=30)
    assert (final.state, final.failure_reason, final.attempt) == (JobState.FAILED, "WORKER_LOST", 1)
    losses = audit(service, job_id, before)
    losses.assert_none()
    evidence("SIGKILL worker, max_attempts=1 (FAILED WORKER_LOST)", 1, losses, [time.monotonic() - killed_at])


def test_duplicate_delivery_executes_the_job_once(service: Service, evidence: Any) -> None:
    producer = make_producer(service.settings)
    job_id = service.submit(slow_training_config(epochs=2))
    with service.sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
    _, resources = split_stored_config(job.config)
    # the same job id, a second message, on the queue the first one went to
    enqueue_job(producer, job_id, queue_for(job.kind, resources, service.settings.job_queue))
    service.start_worker("w1")
    service.start_worker("w2")
    final = service.wait_terminal(job_id)
    assert (final.state, final.attempt) == (JobState.SUCCEEDED, 1)
    with service.sessions() as s:
        claims = [e for e in list_events(s, job_id, principal=ADMIN) if e.to_state == JobState.RUNNING]
    assert len(claims) == 1
    # the second message was received and dropped (both workers log to their own files)
    wait_for("the duplicate dropped", lambda: "duplicate delivery" in service.log_text("w"), deadline_s=60)
    losses = audit(service, job_id)
    losses.assert_none()
    evidence("duplicate delivery of one Celery message", 1, losses, [0.0])
