"""execute_job (the body of the run_job task) on a real SQLite store and the real tiny trainer, without Celery.

Redis points at a closed port: publishing and the cancel flag must fail softly (SQL is the truth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import FailureReason, JobKind, JobState
from api_schemas.metrics import VAL_K_ACC
from server.settings import Settings
from server.store import ArtifactStore, create_job, get_job, list_checkpoints, read_points
from server.store.principals import ADMIN, ANONYMOUS
from tests.checkpoints import assert_training_checkpoint
from tests.worker.configs import quick_diagnostic_config
from worker.tasks import execute_job, worker_deadline_s

CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def settings(tmp_path: Path, sessions: sessionmaker[Session]) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'store.sqlite'}", redis_url=CLOSED_REDIS,
        artifact_dir=tmp_path / "artifacts", scratch_dir=tmp_path / "scratch", heartbeat_interval_s=0.2,
        lease_timeout_s=5.0,
        allow_fault_injection=True,
    )


def _submit(sessions: sessionmaker[Session], config: dict[str, Any], *, kind: JobKind = JobKind.DIAGNOSTIC) -> str:
    with sessions() as s:
        return create_job(s, kind=kind, name="t", config=config, max_attempts=2, principal=ANONYMOUS).id


def _with(config: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values}
    return out


def test_execute_job_tiny_diagnostic_succeeds_with_final_checkpoint(sessions, settings) -> None:
    job_id = _submit(sessions, quick_diagnostic_config())
    assert execute_job(job_id, worker="w1", settings=settings) is JobState.SUCCEEDED
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
        names = [c.name for c in list_checkpoints(s, job_id, principal=ADMIN)]
    assert job.state == JobState.SUCCEEDED
    assert "final" in names
    # the job's latest value is the last stored point, and a share of the val scenes
    with sessions() as s:
        history = read_points(s, job_id, principal=ADMIN, keys=[VAL_K_ACC]).points
    k_acc, n_val = job.latest_metrics[VAL_K_ACC], quick_diagnostic_config()["data"]["n_val"]
    assert [p.value for p in history][-1] == k_acc
    assert k_acc * n_val == pytest.approx(round(k_acc * n_val), abs=1e-6)


def test_execute_job_diagnostic_stores_the_report(sessions, settings) -> None:
    job_id = _submit(sessions, quick_diagnostic_config())
    execute_job(job_id, worker="w1", settings=settings)
    with sessions() as s:
        assert get_job(s, job_id, principal=ADMIN).report


def test_execute_job_writes_the_job_log(sessions, settings) -> None:
    job_id = _submit(sessions, quick_diagnostic_config())
    execute_job(job_id, worker="w1", settings=settings)
    store = ArtifactStore(settings.artifact_location)
    log_text = store.objects.read_range(store.log_key(job_id), 0, 1 << 20).decode()
    assert "claimed job" in log_text
    assert "finished: SUCCEEDED" in log_text
    assert not (settings.scratch_dir / "jobs" / job_id).exists(), "the scratch directory goes with the attempt"


def test_execute_job_second_delivery_is_dropped(sessions, settings) -> None:
    job_id = _submit(sessions, quick_diagnostic_config())
    execute_job(job_id, worker="w1", settings=settings)
    assert execute_job(job_id, worker="w2", settings=settings) is None
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
    assert (job.state, job.attempt, job.worker) == (JobState.SUCCEEDED, 1, "w1")


def test_execute_job_unknown_job_is_dropped(settings) -> None:
    assert execute_job("00000000-0000-0000-0000-000000000000", worker="w1", settings=settings) is None


def test_execute_job_invalid_stored_config_fails_user_config(sessions, settings) -> None:
    job_id = _submit(sessions, _with(quick_diagnostic_config(), data={"batch_size": 0}))
    assert execute_job(job_id, worker="w1", settings=settings) is JobState.FAILED
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
    assert job.failure_reason == FailureReason.USER_CONFIG
    assert "data.batch_size" in (job.failure_message or "")


def test_execute_job_with_debug_faults_fails_user_config_when_the_worker_forbids_them(sessions, settings) -> None:
    forbidding = settings.model_copy(update={"allow_fault_injection": False})
    job_id = _submit(sessions, _with(quick_diagnostic_config(), debug={"nan_loss_term": "k"}))
    assert execute_job(job_id, worker="w1", settings=forbidding) is JobState.FAILED
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
        checkpoints = list_checkpoints(s, job_id, principal=ADMIN)
    assert job.failure_reason == FailureReason.USER_CONFIG
    assert "config.debug" in (job.failure_message or "")
    assert "ALLOW_FAULT_INJECTION" in (job.failure_message or "")
    assert job.step == 0 and not checkpoints, "the refused job must not have trained"


def test_execute_job_endless_nan_fails_nonfinite_abort(sessions, settings) -> None:
    config = quick_diagnostic_config()
    config["phases"][0]["max_consecutive_nonfinite"] = 2
    job_id = _submit(sessions, _with(config, debug={"nan_loss_term": "k"}))
    assert execute_job(job_id, worker="w1", settings=settings) is JobState.FAILED
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
    assert job.failure_reason == FailureReason.NONFINITE_ABORT
    assert job.nonfinite_total >= 2
    assert job.nonfinite["by_cause"].get("loss", 0) >= 2


def test_execute_job_worker_deadline_fails_timeout_with_a_stop_checkpoint(sessions, settings, tmp_path) -> None:
    fast = settings.model_copy(update={"job_soft_time_limit_s": 1.0, "job_hard_time_limit_s": 5.0})
    assert worker_deadline_s(fast) == pytest.approx(0.9)
    job_id = _submit(sessions, _with(quick_diagnostic_config(), debug={"sleep_per_step_s": 0.2}, data={"n_train": 256}))
    assert execute_job(job_id, worker="w1", settings=fast) is JobState.FAILED
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
        checkpoints = list_checkpoints(s, job_id, principal=ADMIN)
    assert job.failure_reason == FailureReason.TIMEOUT
    assert checkpoints, "the stop checkpoint must stay downloadable"
    store = ArtifactStore(settings.artifact_location)
    path = store.fetch(store.job_key(job_id, checkpoints[-1].path), tmp_path / "stop.pt",
                       sha256=checkpoints[-1].sha256)
    assert_training_checkpoint(torch.load(path, weights_only=True), kind="diagnostic", phase="k_only")
