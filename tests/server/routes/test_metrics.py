"""Metric routes: paged history and the SSE stream (replay, Last-Event-ID, live points, terminal close)."""

from __future__ import annotations

import json
import threading
import time

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import JobState, MetricPoint
from api_schemas.metrics import TRAIN_LOSS, VAL_K_ACC
from server.store import append_points, transition
from server.store.live import publish_points, publish_state
from server.store.principals import ADMIN
from tests.factories import make_job


def _points(n: int, key: str = TRAIN_LOSS, start: int = 0) -> list[MetricPoint]:
    return [MetricPoint(phase="k_only", epoch=0, step=start + i, key=key, value=float(i)) for i in range(n)]


def _events(text: str) -> list[dict[str, str]]:
    """Parse an SSE body into events ({event, id, data}); comments (pings) are skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


def test_read_metrics_pages_and_filters(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(5) + _points(2, VAL_K_ACC), lease_token=job.lease_token)
    page = client.get(f"/v1/jobs/{job.id}/metrics", params={"limit": 3}).json()
    assert [p["seq"] for p in page["points"]] == [1, 2, 3] and page["next_since_seq"] == 3
    rest = client.get(f"/v1/jobs/{job.id}/metrics", params={"since_seq": 3}).json()
    assert [p["seq"] for p in rest["points"]] == [4, 5, 6, 7] and rest["next_since_seq"] is None
    acc = client.get(f"/v1/jobs/{job.id}/metrics", params={"keys": f"{VAL_K_ACC},other"}).json()
    assert [p["key"] for p in acc["points"]] == [VAL_K_ACC, VAL_K_ACC]


def test_read_metrics_max_points_downsamples(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(50), lease_token=job.lease_token)
    page = client.get(f"/v1/jobs/{job.id}/metrics", params={"max_points": 5}).json()
    assert [p["step"] for p in page["points"]] == [9, 19, 29, 39, 49]


def test_read_metrics_unknown_job_returns_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/metrics").status_code == 404


def test_read_metrics_with_bad_limit_returns_422(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session)
    r = client.get(f"/v1/jobs/{job.id}/metrics", params={"limit": 0})
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "limit")


def test_stream_of_finished_job_replays_points_then_state_and_closes(
    client: TestClient, api_session: Session
) -> None:
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(3), lease_token=job.lease_token)
    transition(api_session, job.id, JobState.SUCCEEDED, lease_token=job.lease_token, principal=ADMIN)
    r = client.get(f"/v1/jobs/{job.id}/metrics/stream")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert [(e["event"], e.get("id")) for e in events] == [
        ("metric", "1"), ("metric", "2"), ("metric", "3"), ("state", None)
    ]
    assert json.loads(events[0]["data"])["key"] == TRAIN_LOSS
    assert json.loads(events[-1]["data"])["state"] == "SUCCEEDED"


def test_stream_resumes_after_last_event_id(client: TestClient, api_session: Session) -> None:
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(4), lease_token=job.lease_token)
    transition(api_session, job.id, JobState.SUCCEEDED, lease_token=job.lease_token, principal=ADMIN)
    r = client.get(f"/v1/jobs/{job.id}/metrics/stream", headers={"Last-Event-ID": "2"})
    assert [e.get("id") for e in _events(r.text) if e["event"] == "metric"] == ["3", "4"]


def test_stream_unknown_job_returns_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/metrics/stream").status_code == 404


def test_stream_forwards_live_points_once_and_closes_at_terminal_state(
    client: TestClient, app: FastAPI, api_session: Session, redis_client: redis.Redis
) -> None:
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(2), lease_token=job.lease_token)

    def worker() -> None:  # what the worker's sink does: store, then publish the same points
        with app.state.session_factory() as s:
            time.sleep(0.5)
            stored = append_points(s, job.id, _points(3, start=2), lease_token=job.lease_token)
            publish_points(redis_client, job.id, stored)
            publish_points(redis_client, job.id, stored)  # a duplicate delivery is dropped by seq
            time.sleep(0.3)
            transition(s, job.id, JobState.SUCCEEDED, lease_token=job.lease_token, principal=ADMIN)
            publish_state(redis_client, job.id, JobState.SUCCEEDED)

    thread = threading.Thread(target=worker)
    thread.start()
    r = client.get(f"/v1/jobs/{job.id}/metrics/stream")
    thread.join()
    events = _events(r.text)
    assert [e.get("id") for e in events if e["event"] == "metric"] == ["1", "2", "3", "4", "5"]
    assert [json.loads(e["data"])["state"] for e in events if e["event"] == "state"] == ["RUNNING", "SUCCEEDED"]
