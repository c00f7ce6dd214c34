"""Real processes, real failures: SIGKILL a worker mid-job, deliver a message twice (jobserver_notes §5.3)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from api_schemas import JobKind, JobState
from server.dispatch import dispatch_job, enqueue_job, make_producer
from server.store import ArtifactStore, create_job, get_job, list_checkpoints, read_points
from server.store.jobs import list_events
from tests.fault.conftest import Service, wait_for
from tests.worker.configs import quick_diagnostic_config

pytestmark = pytest.mark.fault


def _slow_config() -> dict[str, Any]:
    """~6 s of training (128 steps of 50 ms) with mid-epoch checkpoints every CHECKPOINT_INTERVAL_S."""
    config = quick_diagnostic_config()
    config["data"]["n_train"] = 2048
    config["debug"] = {"sleep_per_step_s": 0.05}
    return config


def _submit(svc: Service, producer: Celery, config: dict[str, Any], *, max_attempts: int = 2) -> str:
    with svc.sessions() as s:
        job = create_job(s, kind=JobKind.DIAGNOSTIC, name="fault", config=config, max_attempts=max_attempts)
        dispatch_job(s, producer, job.id, svc.settings.job_queue)
        return job.id


def _job(svc: Service, job_id: str) -> Any:
    with svc.sessions() as s:
        return get_job(s, job_id)


def _checkpoint_step(svc: Service, job_id: str, min_step: int) -> int | None:
    """The highest checkpoint step once one at >= min_step exists (else None)."""
    with svc.sessions() as s:
        steps = [c.step for c in list_checkpoints(s, job_id)]
    return max(steps) if steps and max(steps) >= min_step else None


def _max_seq(svc: Service, job_id: str) -> int:
    with svc.sessions() as s:
        points = read_points(s, job_id, limit=10_000).points
    return max((p.seq for p in points), default=0)


def _kill_after_checkpoint(svc: Service, job_id: str, worker: Any) -> int:
    """Wait for a mid-run checkpoint at step >= 5, SIGKILL the worker; returns the checkpoint step."""
    wait_for("job RUNNING", lambda: _job(svc, job_id).state == JobState.RUNNING)
    step = wait_for("a checkpoint at step >= 5", lambda: _checkpoint_step(svc, job_id, 5))
    svc.kill(worker)
    return int(step)


def test_sigkilled_worker_job_is_requeued_and_resumes_from_checkpoint(service: Service) -> None:
    producer = make_producer(service.settings)
    job_id = _submit(service, producer, _slow_config())
    first = service.start_worker("w1")
    service.start_reaper()
    ckpt_step = _kill_after_checkpoint(service, job_id, first)
    last_seq_of_attempt_1 = _max_seq(service, job_id)

    requeued = wait_for("requeue as attempt 2", lambda: (j := _job(service, job_id)).attempt == 2 and j)
    assert requeued.state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
    service.start_worker("w2")
    final = wait_for("job finished", lambda: (j := _job(service, job_id)).state in
                     (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED) and j, deadline_s=120)
    assert final.state == JobState.SUCCEEDED, final.failure_message
    assert final.attempt == 2

    with service.sessions() as s:
        points = read_points(s, job_id, since_seq=last_seq_of_attempt_1, limit=10_000).points
    assert points, "attempt 2 logged metrics"
    assert min(p.step for p in points) >= ckpt_step, "attempt 2 resumed from the checkpoint, not step 0"
    log_text = ArtifactStore(service.settings.artifact_dir).log_path(job_id).read_text()
    assert "resuming from checkpoint" in log_text


def test_sigkilled_worker_with_one_attempt_fails_worker_lost(service: Service) -> None:
    producer = make_producer(service.settings)
    job_id = _submit(service, producer, _slow_config(), max_attempts=1)
    worker = service.start_worker("w1")
    service.start_reaper()
    _kill_after_checkpoint(service, job_id, worker)
    final = wait_for("FAILED", lambda: (j := _job(service, job_id)).state == JobState.FAILED and j)
    assert final.failure_reason == "WORKER_LOST"
    assert final.attempt == 1


def test_duplicate_delivery_executes_the_job_once(service: Service) -> None:
    producer = make_producer(service.settings)
    config = quick_diagnostic_config()
    config["debug"] = {"sleep_per_step_s": 0.05}
    job_id = _submit(service, producer, config)
    enqueue_job(producer, job_id, service.settings.job_queue)  # the same job id, a second message
    service.start_worker("w1")
    service.start_worker("w2")
    final = wait_for("job finished", lambda: (j := _job(service, job_id)).state == JobState.SUCCEEDED and j,
                     deadline_s=120)
    assert final.attempt == 1
    with service.sessions() as s:
        claims = [e for e in list_events(s, job_id) if e.to_state == JobState.RUNNING]
    assert len(claims) == 1
    # the second message was received and dropped (both workers log to their own files)
    wait_for("the duplicate dropped", lambda: any(
        "duplicate delivery" in p.read_text() for p in service.log_dir.glob("w*.log")), deadline_s=60)
