"""The SSE stream's live path, read event by event from a real uvicorn server: with the SQL poll interval set
to an hour, points that a worker publishes reach the client at once, in order and once — so they can only
have come through the Redis pub/sub branch. Nothing here sleeps: each step waits for the event it needs, and a
read that gets nothing for READ_TIMEOUT_S fails the test."""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy.orm import Session

from api_schemas import JobState, MetricPoint, StoredMetricPoint
from api_schemas.metrics import TRAIN_LOSS
from server.routes import metrics as metrics_route
from server.store import append_points, transition, utcnow
from server.store.live import live_channel, publish_points, publish_state
from server.store.principals import ADMIN
from tests.factories import make_job
from tests.server.sse_client import EventReader

#: a read that waits longer than this has missed a point that the live branch should have sent at once
READ_TIMEOUT_S = 10.0
#: the SQL poll of the stream during these tests: far longer than any read may wait
POLL_INTERVAL_S = 3600.0


def _points(n: int, start: int = 0) -> list[MetricPoint]:
    return [MetricPoint(phase="k_only", epoch=1, step=start + i, key=TRAIN_LOSS, value=0.5 * (start + i))
            for i in range(n)]


def test_live_points_arrive_without_waiting_for_the_sql_poll(
    served: str, app: FastAPI, api_session: Session, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", POLL_INTERVAL_S)
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(2), lease_token=job.lease_token)
    timeout = httpx.Timeout(READ_TIMEOUT_S)
    with httpx.Client(base_url=served, timeout=timeout) as client, \
            client.stream("GET", f"/v1/jobs/{job.id}/metrics/stream") as response:
        assert response.status_code == 200
        events = EventReader(response)
        # the replay from SQL, then the state: by now the stream is subscribed (it subscribes before replaying)
        replay = [events.next(), events.next(), events.next()]
        assert [(e["event"], e.get("id")) for e in replay] == [("metric", "1"), ("metric", "2"), ("state", None)]
        assert redis_client.pubsub_numsub(live_channel(job.id))[0][1] == 1

        # what the worker's sink does: store, then publish; a duplicate delivery must not show twice
        stored = append_points(api_session, job.id, _points(3, start=2), lease_token=job.lease_token)
        assert publish_points(redis_client, job.id, stored) == 1
        publish_points(redis_client, job.id, stored)
        live = [events.next() for _ in range(3)]
        assert [(e["event"], e["id"]) for e in live] == [("metric", "3"), ("metric", "4"), ("metric", "5")]
        assert [json.loads(e["data"])["value"] for e in live] == [1.0, 1.5, 2.0]

        # a state message makes the stream re-read SQL at once: it reports the terminal state and ends
        transition(api_session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
        publish_state(redis_client, job.id, JobState.SUCCEEDED)
        final = events.next()
        assert final is not None and final["event"] == "state"
        assert json.loads(final["data"]) == {"state": "SUCCEEDED", "failure": None}
        assert events.next() is None, "the stream ends after the terminal state"


def test_live_points_not_yet_in_sql_are_forwarded_in_seq_order(
    served: str, api_session: Session, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # points published before the store's commit is visible to the stream's reader: only the live branch can
    # deliver them
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", POLL_INTERVAL_S)
    job = make_job(api_session, JobState.RUNNING)
    with httpx.Client(base_url=served, timeout=httpx.Timeout(READ_TIMEOUT_S)) as client, \
            client.stream("GET", f"/v1/jobs/{job.id}/metrics/stream") as response:
        events = EventReader(response)
        first = events.next()
        assert first is not None and json.loads(first["data"])["state"] == "RUNNING"
        pending = [StoredMetricPoint(seq=i + 1, ts=utcnow(), **p.model_dump()) for i, p in enumerate(_points(2))]
        assert publish_points(redis_client, job.id, pending) == 1
        assert [(e["event"], e["id"]) for e in (events.next(), events.next())] == [("metric", "1"), ("metric", "2")]
        append_points(api_session, job.id, _points(2), lease_token=job.lease_token)
        transition(api_session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
        publish_state(redis_client, job.id, JobState.SUCCEEDED)
        final = events.next()
        assert final is not None and json.loads(final["data"])["state"] == "SUCCEEDED"
        assert events.next() is None
