"""Several machines: workers that share only the database, Redis and the artifact store (S3 on a moto server),
each with its own scratch directory. A job killed on one machine resumes on another from the store's
checkpoint; a store that goes away mid-run never leaves a record pointing at a missing or partial object;
priorities order the jobs waiting in a queue; a job whose queue no live worker serves says so."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from api_schemas import JobState, Resources, stored_config
from server.store.objects import TEMP_PREFIX
from tests.fault.conftest import Service, acknowledged, api_client, audit, slow_training_config, wait_for
from tests.s3 import MotoS3, moto_server, s3_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.fault

#: A lease long enough for a worker's first S3 client and torch import on a loaded machine; a killed worker's
#: job is requeued LEASE_TIMEOUT_S after its last heartbeat.
ROOMY_LEASE = {"LEASE_TIMEOUT_S": "12", "HEARTBEAT_INTERVAL_S": "1"}


@pytest.fixture
def s3_service(make_service: Any, s3_env: str) -> Service:  # noqa: F811
    """A fault world whose artifact store is S3 (moto); ARTIFACT_DIR exists only to prove nothing goes there."""
    return make_service(ARTIFACT_URL=s3_env, **ROOMY_LEASE)  # type: ignore[no-any-return]


@pytest.fixture
def roomy_service(make_service: Any) -> Service:
    return make_service(**ROOMY_LEASE)  # type: ignore[no-any-return]


def _first_checkpoint(svc: Service, job_id: str) -> int:
    svc.wait_state(job_id, JobState.RUNNING)

    def checkpointed() -> int | None:
        job = svc.job(job_id)
        assert job.state == JobState.RUNNING, f"job ended {job.state} early: {job.failure_message}"
        steps = [step for step, _ in acknowledged(svc, job_id).checkpoints.values()]
        return max(steps) if steps else None

    return wait_for("a first checkpoint", checkpointed)


def test_a_job_killed_on_one_machine_resumes_on_another_from_the_object_store(s3_service: Service) -> None:
    svc = s3_service
    job_id = svc.submit(slow_training_config(epochs=6))
    first = svc.start_worker("machine-a")
    svc.start_reaper()
    _first_checkpoint(svc, job_id)
    svc.kill(first)
    before = acknowledged(svc, job_id)
    svc.start_worker("machine-b")
    final = svc.wait_terminal(job_id, deadline_s=300)
    assert final.state == JobState.SUCCEEDED, final.failure_message
    assert final.attempt == 2 and final.worker.startswith("machine-b")
    assert "fetched from the artifact store" in svc.log_text_of_job(job_id)
    audit(svc, job_id, before).assert_none()
    assert not (Path(svc.settings.artifact_dir) / "jobs").exists(), "every artifact went to the object store"


def test_the_object_store_going_away_mid_run_leaves_only_complete_records(
    s3_service: Service, moto_server: MotoS3  # noqa: F811
) -> None:
    svc = s3_service
    job_id = svc.submit(slow_training_config(epochs=8))
    svc.start_worker("machine-a")
    _first_checkpoint(svc, job_id)
    moto_server.stop()  # the next checkpoint upload fails, whatever it had sent so far
    try:
        final = svc.wait_terminal(job_id, deadline_s=120)
    finally:
        moto_server.start()
    assert (final.state, final.failure_reason) == (JobState.FAILED, "INTERNAL"), final.failure_message
    assert "could not be uploaded to the artifact store" in final.failure_message
    losses = audit(svc, job_id)  # every record's object exists, complete, with the recorded sha256
    losses.assert_none()
    assert acknowledged(svc, job_id).checkpoints, "the checkpoints taken before the outage stay listed"
    leftovers = [o.key for o in svc.artifacts.objects.list(TEMP_PREFIX)]
    assert all(key.startswith(f"{TEMP_PREFIX}/") for key in leftovers), "only temporary keys, for the sweep"


def test_a_later_urgent_job_runs_before_an_earlier_one_while_the_worker_is_busy(roomy_service: Service) -> None:
    service = roomy_service
    busy = service.submit(slow_training_config(epochs=3))
    service.start_worker("w1")
    service.wait_state(busy, JobState.RUNNING)
    quick = slow_training_config(epochs=1, sleep_per_step_s=0.0)
    early_low = service.submit(stored_config(quick, Resources(), priority=1))
    time.sleep(0.2)
    late_urgent = service.submit(stored_config(quick, Resources(), priority=9))
    for job_id in (busy, early_low, late_urgent):
        assert service.wait_terminal(job_id, deadline_s=180).state == JobState.SUCCEEDED
    low, urgent = service.job(early_low), service.job(late_urgent)
    assert urgent.started_at < low.started_at, "the urgent job waited behind the earlier, less urgent one"


def test_a_job_no_live_worker_serves_says_so_until_one_comes(roomy_service: Service) -> None:
    service = roomy_service
    service.start_worker("cpu-only", queues=("cpu",))
    service.start_reaper()
    job_id = service.submit(slow_training_config(epochs=1, sleep_per_step_s=0.0))  # default device: gpu queue
    client = api_client(service)

    def reason() -> str | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        assert body["state"] == "QUEUED"
        return body["waiting_reason"]  # type: ignore[no-any-return]

    text = wait_for("the waiting reason", reason, deadline_s=60)
    assert text.startswith("waiting for a cuda worker") and "gpu queue" in text
    service.start_worker("gpu-queue", queues=("gpu",))  # no GPU here: it runs the job on the CPU
    final = service.wait_terminal(job_id)
    assert final.state == JobState.SUCCEEDED, final.failure_message
    assert client.get(f"/v1/jobs/{job_id}").json()["waiting_reason"] is None
