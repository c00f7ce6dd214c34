"""Faults inside one job: cancel in every state, the soft time limit, an unwritable
artifact directory, and an out-of-memory error — each on real prefork workers."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas import JobState
from server.store.job_queries import list_events
from server.store.objects import TEMP_PREFIX
from server.store.principals import ADMIN
from tests.checkpoints import assert_training_checkpoint
from tests.fault.conftest import Service, acknowledged, api_client, audit, slow_training_config, wait_for

pytestmark = pytest.mark.fault


def _events(svc: Service, job_id: str) -> list[str]:
    with svc.sessions() as s:
        return [e.to_state for e in list_events(s, job_id, principal=ADMIN)]


def _last_event_message(svc: Service, job_id: str) -> str | None:
    """The message of the job's last transition: who decided it (the worker, the reaper or the API)."""
    with svc.sessions() as s:
        return list_events(s, job_id, principal=ADMIN)[-1].message


# ---------------------------------------------------------------------------------------------- 5. cancel


def test_cancel_while_queued_ends_cancelled_and_never_starts(service: Service, evidence: Any) -> None:
    client = api_client(service)
    job_id = service.submit(slow_training_config(epochs=1))  # no worker yet: the message waits
    t0 = time.monotonic()
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert (response.status_code, response.json()["state"]) == (202, "CANCELLED")
    recovery_s = time.monotonic() - t0
    service.start_worker("w1")
    wait_for("the message dropped", lambda: "duplicate delivery" in service.log_text("w1"), deadline_s=60)
    assert _events(service, job_id) == ["QUEUED", "CANCELLED"]
    audit(service, job_id).assert_none()
    evidence("cancel while QUEUED", 1, audit(service, job_id), [recovery_s])


def test_cancel_while_running_goes_cancelling_then_cancelled_within_grace(service: Service, evidence: Any) -> None:
    client = api_client(service)
    service.start_worker("w1")
    job_id = service.submit(slow_training_config(epochs=20))
    wait_for("training steps", lambda: service.job(job_id).step >= 2)
    t0 = time.monotonic()
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert (response.status_code, response.json()["state"]) == (202, "CANCELLING")
    final = service.wait_terminal(job_id, deadline_s=service.settings.cancel_grace_s + 5)
    elapsed_s = time.monotonic() - t0
    assert final.state == JobState.CANCELLED
    assert _events(service, job_id)[-2:] == ["CANCELLING", "CANCELLED"]
    # the worker honoured the cancel itself: its event, not the reaper's escalation
    assert _last_event_message(service, job_id) == "cancelled by request"
    assert "cancel grace period expired" not in str(final.failure_message)
    ckpts = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert any(c["name"].endswith("-last") for c in ckpts), "the stop checkpoint is listed"
    losses = audit(service, job_id)
    losses.assert_none()
    evidence("cancel while RUNNING (cooperative)", 1, losses, [elapsed_s])


def test_cancel_of_job_that_ignores_the_flag_is_escalated(make_service: Any, evidence: Any) -> None:
    service = make_service(CANCEL_GRACE_S="3")
    client = api_client(service)
    service.start_reaper()
    worker = service.start_worker("w1")
    job_id = service.submit(slow_training_config(epochs=30, ignore_cancel=True))
    service.wait_state(job_id, JobState.RUNNING)
    t0 = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "CANCELLING"
    final = service.wait_terminal(job_id, deadline_s=service.settings.cancel_grace_s + 10)
    elapsed_s = time.monotonic() - t0
    assert final.state == JobState.CANCELLED
    # CANCELLED by the reaper's escalation, not by the worker
    assert _last_event_message(service, job_id) == "cancel grace period expired; the task should be revoked"
    # the wedged attempt is stopped by its fenced writes (LeaseLost) and writes nothing after CANCELLED
    wait_for("the wedged attempt stopped", lambda: "lease lost" in service.log_text("w1"), deadline_s=30)
    frozen = acknowledged(service, job_id)
    time.sleep(1.0)
    assert acknowledged(service, job_id) == frozen
    # the worker is free again: a next job runs on it
    assert worker.poll() is None
    next_id = service.submit(slow_training_config(epochs=1))
    assert service.wait_terminal(next_id).state == JobState.SUCCEEDED
    losses = audit(service, job_id, frozen)
    losses.assert_none()
    evidence("cancel of a job that ignores the flag (escalation)", 1, losses, [elapsed_s])


def test_repeated_cancel_requests_are_idempotent(service: Service, evidence: Any) -> None:
    client = api_client(service)
    service.start_worker("w1")
    job_id = service.submit(slow_training_config(epochs=20))
    service.wait_state(job_id, JobState.RUNNING)
    states = [client.post(f"/v1/jobs/{job_id}/cancel") for _ in range(5)]
    assert {(r.status_code, r.json()["state"]) for r in states} <= {(202, "CANCELLING"), (202, "CANCELLED")}
    assert service.wait_terminal(job_id).state == JobState.CANCELLED
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert (again.status_code, again.json()["state"]) == (202, "CANCELLED")
    assert _events(service, job_id).count("CANCELLING") == 1
    done_id = service.submit(slow_training_config(epochs=1))
    assert service.wait_terminal(done_id).state == JobState.SUCCEEDED
    assert client.post(f"/v1/jobs/{done_id}/cancel").status_code == 409
    evidence("repeated cancel requests (5 + 1 after CANCELLED)", 6, audit(service, job_id), [0.0])


# ---------------------------------------------------------------------------------------------- 6. time limit


def _download_latest(client: Any, job_id: str) -> bytes:
    listing = {c["name"]: c for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()}
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/latest")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() in {c["sha256"] for c in listing.values()}
    return response.content


def test_soft_time_limit_saves_a_checkpoint_and_fails_timeout(make_service: Any, evidence: Any) -> None:
    # the limit covers the child's torch import and setup too (over 15 s on a 2-core box under load); the trainer
    # ends 10 % (3 s) before it, at a step boundary, which leaves room for one epoch-end validation
    svc = make_service(JOB_SOFT_TIME_LIMIT_S="30", JOB_HARD_TIME_LIMIT_S="60")
    svc.start_worker("w1")
    job_id = svc.submit(slow_training_config(epochs=100))
    final = svc.wait_terminal(job_id, deadline_s=120)
    assert (final.state, final.failure_reason) == (JobState.FAILED, "TIMEOUT"), final.failure_message
    assert "stop checkpoint at step" in final.failure_message  # the cooperative stop, not the backstop
    data = _download_latest(api_client(svc), job_id)
    state = torch.load(io.BytesIO(data), weights_only=True)
    assert_training_checkpoint(state, kind="training", phase="k_only")
    assert state["position"]["global_step"] >= 1
    losses = audit(svc, job_id)
    losses.assert_none()
    evidence("soft time limit (cooperative stop + checkpoint)", 1, losses, [])


def test_soft_time_limit_backstop_fails_timeout_when_the_trainer_never_polls(make_service: Any) -> None:
    svc = make_service(JOB_SOFT_TIME_LIMIT_S="12", JOB_HARD_TIME_LIMIT_S="40")
    svc.start_worker("w1")
    job_id = svc.submit(slow_training_config(epochs=100, ignore_cancel=True))
    final = svc.wait_terminal(job_id, deadline_s=60)
    assert (final.state, final.failure_reason) == (JobState.FAILED, "TIMEOUT"), final.failure_message
    assert "soft time limit" in final.failure_message
    _download_latest(api_client(svc), job_id)  # the last periodic checkpoint
    audit(svc, job_id).assert_none()


# ---------------------------------------------------------------------------------------------- 7. storage


def test_an_artifact_store_that_refuses_writes_fails_the_job_with_a_clear_reason(service: Service,
                                                                              evidence: Any) -> None:
    """Root ignores chmod, so the store's temporary-key directory is replaced by a regular file: every upload
    fails (ENOTDIR/EEXIST), as on a read-only or vanished volume. The checkpoint is never recorded."""
    job_id = service.submit(slow_training_config(epochs=2), dispatch=False)
    blocker = Path(service.settings.artifact_dir) / TEMP_PREFIX
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    service.dispatch(job_id)
    service.start_worker("w1")
    final = service.wait_terminal(job_id)
    assert (final.state, final.failure_reason) == (JobState.FAILED, "INTERNAL")
    assert "could not be uploaded to the artifact store" in final.failure_message
    assert api_client(service).get(f"/v1/jobs/{job_id}/checkpoints").json() == []
    losses = audit(service, job_id)
    losses.assert_none()
    evidence("artifact store refuses writes", 1, losses, [])


def test_artifact_root_that_is_a_file_fails_the_job_not_the_worker(make_service: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "artifact-root-is-a-file"
    blocker.write_text("x")
    svc = make_service(ARTIFACT_DIR=str(blocker))
    worker = svc.start_worker("w1")
    job_id = svc.submit(slow_training_config(epochs=1))
    final = svc.wait_terminal(job_id, deadline_s=60)
    assert (final.state, final.failure_reason) == (JobState.FAILED, "INTERNAL")
    assert "artifact store" in final.failure_message
    assert worker.poll() is None
    with svc.sessions() as s:
        from server.store import list_checkpoints

        assert list_checkpoints(s, job_id, principal=ADMIN) == []


# ---------------------------------------------------------------------------------------------- 8. OOM


def test_out_of_memory_fails_oom_and_the_worker_runs_the_next_job(service: Service, evidence: Any) -> None:
    worker = service.start_worker("w1")
    job_id = service.submit(slow_training_config(epochs=2, oom_at_step=3))
    final = service.wait_terminal(job_id)
    assert (final.state, final.failure_reason) == (JobState.FAILED, "OOM"), final.failure_message
    assert "out-of-memory" in final.failure_message
    assert worker.poll() is None, "the worker process survived"
    next_id = service.submit(slow_training_config(epochs=1))
    following = service.wait_terminal(next_id)
    assert following.state == JobState.SUCCEEDED
    assert following.worker == final.worker, "the same worker ran the next job"
    losses = audit(service, job_id)
    losses.add(audit(service, next_id))
    losses.assert_none()
    evidence("out-of-memory in a job", 1, losses, [])
