"""Job routes through the real app (SQLite in tmp_path, real Redis db 14): create, read, list, cancel,
delete, events, logs, report, and the bad-input list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import DebugConfig, JobState, MetricPoint
from api_schemas.metrics import NONFINITE_CAUSE_PREFIX, PROGRESS_FRACTION, TRAIN_LOSS
from server.dispatch import dispatch_pending, job_queue_name, make_producer, queue_depth
from server.main import create_app
from server.store import ArtifactStore, append_points, get_job, set_report
from server.store.live import cancel_flag_set
from server.store.principals import ADMIN
from tests.factories import make_job, tiny_config
from tests.server.conftest import REDIS_DOWN_URL, make_settings

BODY = {"kind": "diagnostic", "name": "diag", "config": tiny_config()}


def test_create_job_returns_202_location_and_enqueues(
    client: TestClient, redis_client: redis.Redis, job_queue: str
) -> None:
    queue = job_queue_name(job_queue, "gpu")
    before = queue_depth(redis_client, queue)
    r = client.post("/v1/jobs", json=BODY)
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["state"], job["kind"], job["attempt"]) == ("QUEUED", "diagnostic", 1)
    assert job["config"]["data"]["batch_size"] == 16
    assert (job["priority"], job["waiting_reason"]) == (5, None)
    assert queue_depth(redis_client, queue) == before + 1


def test_create_job_with_invalid_config_returns_422_naming_field(client: TestClient) -> None:
    body = {"kind": "diagnostic", "config": {**tiny_config(), "data": {"batch_size": 0}}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == ["config.data.batch_size"]


def test_create_job_with_cross_field_error_names_config(client: TestClient) -> None:
    body = {"kind": "training", "config": {"model": {"d_model": 10, "n_heads": 4}}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "config.model"
    assert "multiple of n_heads" in r.json()["errors"][0]["message"]


def test_create_evaluation_job_without_checkpoint_returns_422_naming_it(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"kind": "evaluation", "config": {}})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["config"]
    assert "checkpoint is required" in r.json()["errors"][0]["message"]


def test_create_evaluation_job_with_bad_upload_id_names_the_field(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"kind": "evaluation", "config": {"checkpoint": {"upload_id": "../x"}}})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["config.checkpoint.upload.upload_id"]


def test_create_job_with_malformed_json_returns_400(client: TestClient) -> None:
    r = client.post("/v1/jobs", content=b'{"kind": "diagnostic",', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["status"] == 400


def test_create_job_with_wrong_content_type_returns_415(client: TestClient) -> None:
    r = client.post("/v1/jobs", content=json.dumps(BODY), headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_create_job_with_oversized_body_returns_413(client: TestClient) -> None:
    big = {**BODY, "name": "x" * (2 * 1024 * 1024)}
    r = client.post("/v1/jobs", json=big)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_create_job_with_oversized_streamed_body_returns_413(client: TestClient) -> None:
    chunks = iter([b'{"kind": "diagnostic", "name": "'] + [b"x" * 65536] * 20 + [b'"}'])
    r = client.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_create_job_with_same_idempotency_key_returns_same_job(client: TestClient) -> None:
    headers = {"Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", json=BODY, headers=headers)
    again = client.post("/v1/jobs", json=BODY, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


FAULTS = [{"nan_loss_term": "k"}, {"sleep_per_step_s": 0.1}, {"ignore_cancel": True}, {"oom_at_step": 3}]


@pytest.mark.parametrize("kind", ["diagnostic", "training"])
@pytest.mark.parametrize("debug", FAULTS, ids=lambda d: next(iter(d)))
def test_create_job_with_debug_faults_is_refused_by_default(
    client: TestClient, api_session: Session, kind: str, debug: dict[str, object]
) -> None:
    config = {**tiny_config(), "debug": debug}
    if kind == "training":
        config.pop("checks")  # a diagnostic-only section
    r = client.post("/v1/jobs", json={"kind": kind, "config": config}, headers={"Idempotency-Key": f"faults-{kind}"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == ["config.debug"]
    assert "ALLOW_FAULT_INJECTION" in r.json()["errors"][0]["message"]
    assert client.get("/v1/jobs").json()["items"] == [], "a refused job must not be stored"


def test_create_job_with_an_all_default_debug_section_is_accepted(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={**BODY, "config": {**tiny_config(), "debug": {"nan_from_step": 0}}})
    assert r.status_code == 202, r.text


def test_create_job_from_preset_passes_the_fault_gate(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"kind": "diagnostic", "preset": "quickstart"})
    assert r.status_code == 202, r.text
    assert r.json()["config"]["debug"] == DebugConfig().model_dump(mode="json")


def test_create_job_with_debug_faults_is_accepted_when_allowed(tmp_path: Path, job_queue: str) -> None:
    app = create_app(make_settings(tmp_path, job_queue, allow_fault_injection=True))
    body = {**BODY, "config": {**tiny_config(), "debug": {"sleep_per_step_s": 0.1, "ignore_cancel": True}}}
    with TestClient(app) as client:
        r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["config"]["debug"]["ignore_cancel"] is True


def test_replayed_idempotency_key_with_other_body_returns_422(client: TestClient) -> None:
    headers = {"Idempotency-Key": "abc-456"}
    assert client.post("/v1/jobs", json=BODY, headers=headers).status_code == 202
    r = client.post("/v1/jobs", json={**BODY, "name": "other"}, headers=headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"


def test_create_job_over_queue_limit_returns_429(tmp_path: Path, job_queue: str) -> None:
    app = create_app(make_settings(tmp_path, job_queue, max_queued_jobs_per_key=1))
    with TestClient(app) as client:
        assert client.post("/v1/jobs", json=BODY).status_code == 202
        assert client.post("/v1/jobs", json=BODY).status_code == 429


def test_create_job_with_redis_down_returns_503_and_keeps_job_queued(
    tmp_path: Path, job_queue: str, redis_client: redis.Redis
) -> None:
    app = create_app(make_settings(tmp_path, job_queue, redis_url=REDIS_DOWN_URL))
    with TestClient(app) as client:
        r = client.post("/v1/jobs", json=BODY)
        assert r.status_code == 503
        job_id = r.json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "QUEUED"
    # once the broker is back, the sweep sends it
    settings = make_settings(tmp_path, job_queue)
    queue = job_queue_name(job_queue, "gpu")
    before = queue_depth(redis_client, queue)
    sent = dispatch_pending(app.state.session_factory, make_producer(settings), job_queue, older_than_s=0)
    assert sent == [job_id]
    assert queue_depth(redis_client, queue) == before + 1


def test_read_unknown_job_returns_404(client: TestClient) -> None:
    r = client.get("/v1/jobs/does-not-exist")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_read_job_shows_progress_nonfinite_and_latest_metrics(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.RUNNING)
    points = [
        MetricPoint(phase="k_only", epoch=0, step=3, key=TRAIN_LOSS, value=float("nan")),
        MetricPoint(phase="k_only", epoch=0, step=3, key=NONFINITE_CAUSE_PREFIX + "grad", value=1.0),
        MetricPoint(phase="k_only", epoch=0, step=4, key=PROGRESS_FRACTION, value=0.5),
    ]
    append_points(api_session, job.id, points, lease_token=job.lease_token)
    body = client.get(f"/v1/jobs/{job.id}").json()
    assert body["progress"] == {"phase": "k_only", "epoch": 0, "step": 4, "fraction": 0.5}
    assert body["nonfinite_steps"]["total"] == 1 and body["nonfinite_steps"]["by_cause"] == {"grad": 1}
    assert body["latest_metrics"] == {TRAIN_LOSS: None, PROGRESS_FRACTION: 0.5}
    assert body["links"]["self"] == f"/v1/jobs/{job.id}"


def test_read_failed_job_shows_failure(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.FAILED)
    assert client.get(f"/v1/jobs/{job.id}").json()["failure"] == {"reason": "TRAINING_ERROR", "message": "boom"}


def test_read_jobs_newest_first_with_filters_and_pages(client: TestClient, api_session: Session) -> None:
    ids = [make_job(api_session).id for _ in range(3)]
    running = make_job(api_session, JobState.RUNNING)
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == [running.id, ids[2]]
    rest = client.get("/v1/jobs", params={"limit": 2, "page_token": page["next_page_token"]}).json()
    assert [j["id"] for j in rest["items"]] == [ids[1], ids[0]]
    only = client.get("/v1/jobs", params={"state": "RUNNING"}).json()
    assert [j["id"] for j in only["items"]] == [running.id]


def test_read_jobs_with_bad_page_token_returns_422(client: TestClient) -> None:
    r = client.get("/v1/jobs", params={"page_token": "garbage"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "page_token"


def test_read_jobs_with_unknown_state_returns_422(client: TestClient) -> None:
    r = client.get("/v1/jobs", params={"state": "DONE"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "state"


def test_read_job_events_lists_transitions(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.SUCCEEDED)
    events = client.get(f"/v1/jobs/{job.id}/events").json()
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "SUCCEEDED")
    ]


def test_read_logs_by_offset(client: TestClient, api_session: Session, api_artifacts: ArtifactStore) -> None:
    job = make_job(api_session, JobState.RUNNING)
    api_artifacts.objects.write(api_artifacts.log_key(job.id), b"epoch 1\nepoch 2\n")
    first = client.get(f"/v1/jobs/{job.id}/logs", params={"limit": 8})
    assert (first.text, first.headers["x-next-offset"]) == ("epoch 1\n", "8")
    rest = client.get(f"/v1/jobs/{job.id}/logs", params={"offset": 8})
    assert (rest.text, rest.headers["x-next-offset"]) == ("epoch 2\n", "16")
    assert client.get(f"/v1/jobs/{job.id}/logs", params={"offset": 99}).status_code == 416


def test_read_report_is_404_until_written_then_json_and_markdown(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.RUNNING)
    assert client.get(f"/v1/jobs/{job.id}/report").status_code == 404
    report = {"verdict": {"k_head": "learns", "k_acc": 0.81}, "per_k": [{"k": 1, "acc": 0.9}, {"k": 2, "acc": 0.7}]}
    set_report(api_session, job.id, report, lease_token=job.lease_token)
    assert client.get(f"/v1/jobs/{job.id}/report").json() == report
    md = client.get(f"/v1/jobs/{job.id}/report", params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown")
    assert "## verdict" in md.text and "| k_head | learns |" in md.text
    assert "| k | acc |" in md.text and "| 2 | 0.7 |" in md.text


def test_cancel_queued_job_cancels_it(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session)
    r = client.post(f"/v1/jobs/{job.id}/cancel")
    assert (r.status_code, r.json()["state"]) == (202, "CANCELLED")


def test_cancel_running_job_sets_cancelling_and_redis_flag(
    client: TestClient, api_session: Session, redis_client: redis.Redis
) -> None:
    job = make_job(api_session, JobState.RUNNING)
    first = client.post(f"/v1/jobs/{job.id}/cancel")
    again = client.post(f"/v1/jobs/{job.id}/cancel")
    assert (first.status_code, first.json()["state"]) == (202, "CANCELLING")
    assert (again.status_code, again.json()["state"]) == (202, "CANCELLING")
    assert cancel_flag_set(redis_client, job.id)
    redis_client.delete(f"job:{job.id}:cancel")


def test_cancel_finished_job_returns_409(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.SUCCEEDED)
    r = client.post(f"/v1/jobs/{job.id}/cancel")
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"


def test_cancel_unknown_job_returns_404(client: TestClient) -> None:
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_delete_running_job_returns_409(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.RUNNING)
    assert client.delete(f"/v1/jobs/{job.id}").status_code == 409
    assert get_job(api_session, job.id, principal=ADMIN).state == JobState.RUNNING


def test_delete_finished_job_returns_204_then_404(
    client: TestClient, api_session: Session, api_artifacts: ArtifactStore
) -> None:
    job = make_job(api_session, JobState.CANCELLED)
    api_artifacts.objects.write(api_artifacts.log_key(job.id), b"log")
    assert client.delete(f"/v1/jobs/{job.id}").status_code == 204
    assert client.get(f"/v1/jobs/{job.id}").status_code == 404
    assert api_artifacts.objects.list(api_artifacts.job_prefix(job.id)) == []
