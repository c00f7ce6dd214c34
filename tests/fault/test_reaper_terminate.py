"""The reaper's last resort against a real prefork worker: a job that ignores its cancel and writes nothing (so no
fenced write can stop it) is CANCELLED after the grace period and, one grace period later, its task — and only
that process — is killed through Celery's revoke(terminate=True); the worker then runs the next job."""

from __future__ import annotations

import os
from typing import Any

import pytest

from api_schemas import JobState
from ris_model.train.jobs import SETUP_PHASE
from server.dispatch import RUN_JOB_TASK, make_producer
from server.store.job_queries import list_events
from server.store.principals import ADMIN
from tests.fault.conftest import Service, acknowledged, api_client, slow_training_config, wait_for

pytestmark = pytest.mark.fault

ESCALATION_MESSAGE = "cancel grace period expired; the task should be revoked"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _active_task(svc: Service, job_id: str) -> dict[str, Any] | None:
    """The run_job task that a worker executes for `job_id` now (Celery's inspect, on the real broker)."""
    active = make_producer(svc.settings).control.inspect(timeout=2.0).active() or {}
    for tasks in active.values():
        for task in tasks:
            if task.get("name") == RUN_JOB_TASK and job_id in (task.get("args") or []):
                return task
    return None


def test_wedged_task_is_terminated_and_the_worker_runs_the_next_job(make_service: Any) -> None:
    # no interval checkpoints and no per-step metrics: between epoch ends (4 steps of 10 s) the task writes
    # nothing, so only the reaper's terminate can stop it in time
    svc = make_service(CANCEL_GRACE_S="2", CHECKPOINT_INTERVAL_S="3600")
    worker = svc.start_worker("w1")
    config = slow_training_config(epochs=30, sleep_per_step_s=10.0, ignore_cancel=True)
    config["log_every_steps"] = 100_000
    job_id = svc.submit(config)
    svc.wait_state(job_id, JobState.RUNNING)
    # in the step loop: the phase-start point is stored, so the task's next write is the epoch end, 40 s away
    # (a cancel during setup would be seen by the setup's own progress writes)
    wait_for("the first training step", lambda: svc.job(job_id).phase not in (None, SETUP_PHASE))
    task = wait_for("the task in the worker's active list", lambda: _active_task(svc, job_id))
    pool_pid = int(task["worker_pid"])
    assert task["id"] == svc.job(job_id).celery_task_id
    assert _pid_alive(pool_pid) and pool_pid != worker.pid

    svc.start_reaper()
    assert api_client(svc).post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "CANCELLING"
    final = svc.wait_terminal(job_id, deadline_s=30)
    assert final.state == JobState.CANCELLED
    with svc.sessions() as s:
        assert list_events(s, job_id, principal=ADMIN)[-1].message == ESCALATION_MESSAGE
    frozen = acknowledged(svc, job_id)

    # the last resort: the reaper names the task it terminates, and that pool process dies
    wait_for("the reaper's terminate", lambda: f"task {task['id']} still runs" in svc.log_text("reaper"),
             deadline_s=30)
    assert f"job {job_id}: task {task['id']} still runs a grace period after CANCELLED; terminating it" \
        in svc.log_text("reaper")
    wait_for("the pool process killed", lambda: not _pid_alive(pool_pid), deadline_s=30)
    assert f"Terminating {task['id']}" in svc.log_text("w1")  # Celery's own record of the revoke
    # killed while it still slept: the task body never reached its own LeaseLost handling
    assert "this attempt writes nothing more" not in svc.log_text("w1")
    assert acknowledged(svc, job_id) == frozen

    # only that process: the worker lives on and runs the next job
    assert worker.poll() is None
    next_id = svc.submit(slow_training_config(epochs=1))
    assert svc.wait_terminal(next_id, deadline_s=120).state == JobState.SUCCEEDED
    assert svc.job(job_id).state == JobState.CANCELLED
