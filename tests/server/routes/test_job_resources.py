"""`resources` of a job through the real app: defaults, round trip, the MAX_GPUS_PER_JOB limit, bad input,
and a job that waits QUEUED names why in its events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import JobState
from server.dispatch import broker_priority, job_queue_name, queue_keys
from server.main import create_app
from server.store import get_job
from server.store.jobs import note_waiting
from server.store.principals import ADMIN
from tests.factories import tiny_config
from tests.server.conftest import make_settings, redis_client  # noqa: F401  (fixture)

BODY = {"kind": "diagnostic", "config": tiny_config()}


def test_resources_default_to_one_process_and_leave_the_config_as_sent(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=BODY).json()
    assert job["resources"] == {"gpus": 1, "device": None}
    assert job["config"] == tiny_config()


def test_resources_round_trip_beside_the_config(client: TestClient, api_session: Session) -> None:
    body = {"kind": "training", "config": {k: v for k, v in tiny_config().items() if k != "checks"},
            "resources": {"gpus": 2, "device": "cpu"}}
    job = client.post("/v1/jobs", json=body).json()
    assert job["resources"] == {"gpus": 2, "device": "cpu"}
    assert "resources" not in job["config"]
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again["resources"] == {"gpus": 2, "device": "cpu"}
    # the store keeps them inside the job's JSON config column (no schema change)
    assert get_job(api_session, job["id"], principal=ADMIN).config["resources"] == {"gpus": 2, "device": "cpu"}


def test_device_and_priority_choose_the_queue_and_its_priority_list(
    client: TestClient, redis_client: Any, job_queue: str  # noqa: F811
) -> None:
    body = {"kind": "diagnostic", "config": tiny_config(), "resources": {"device": "cpu"}, "priority": 9}
    job = client.post("/v1/jobs", json=body).json()
    assert (job["priority"], job["resources"]["device"]) == (9, "cpu")
    urgent_list = queue_keys(job_queue_name(job_queue, "cpu"))[broker_priority(9)]
    assert any(job["id"].encode() in m for m in redis_client.lrange(urgent_list, 0, -1))
    assert client.post("/v1/jobs", json={**body, "priority": 10}).status_code == 422
    redis_client.delete(*queue_keys(job_queue_name(job_queue, "cpu")))


def test_more_gpus_than_max_gpus_per_job_is_a_422_naming_the_field(tmp_path: Path, job_queue: str) -> None:
    settings = make_settings(tmp_path, job_queue, max_gpus_per_job=4)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/jobs", json={**BODY, "resources": {"gpus": 4}}).status_code == 202
        r = client.post("/v1/jobs", json={**BODY, "resources": {"gpus": 5}})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    [error] = r.json()["errors"]
    assert error["field"] == "resources.gpus"
    assert "at most 4 GPUs" in error["message"] and "MAX_GPUS_PER_JOB" in error["message"]


def test_bad_resources_are_422s(client: TestClient) -> None:
    for resources, field in (({"gpus": 0}, "resources.gpus"), ({"gpus": "2"}, "resources.gpus"),
                             ({"device": "tpu"}, "resources.device"), ({"cores": 2}, "resources.cores")):
        r = client.post("/v1/jobs", json={**BODY, "resources": resources})
        assert r.status_code == 422, resources
        assert [e["field"] for e in r.json()["errors"]] == [field], r.json()
    r = client.post("/v1/jobs", json={"kind": "evaluation", "config": {}, "resources": {"gpus": 2}})
    assert r.status_code == 422  # evaluation jobs take no resources


def test_a_waiting_job_shows_its_reason_once_in_its_events(client: TestClient, api_session: Session) -> None:
    job = client.post("/v1/jobs", json={**BODY, "resources": {"gpus": 4}}).json()
    reason = "waiting: no live worker can run it; it needs 4 GPUs; this worker has 1"
    assert note_waiting(api_session, job["id"], reason)
    assert not note_waiting(api_session, job["id"], reason)  # the same reason again: no second event
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    assert [(e["from_state"], e["to_state"], e["message"]) for e in events][-1] == ("QUEUED", "QUEUED", reason)
    assert sum(e["message"] == reason for e in events) == 1
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == JobState.QUEUED.value
