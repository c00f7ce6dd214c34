"""The SSE stream when things go wrong or get large: the failure it reports, a replay longer than one page, a job
that ends without a state message, Redis down from the start or lost mid-stream, and a malformed live message.
The streaming cases run on a real uvicorn server and read event by event (tests/server/sse_client.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import FailureReason, JobState, MetricPoint
from api_schemas.metrics import TRAIN_LOSS
from server.main import create_app
from server.routes import metrics as metrics_route
from server.store import append_points, transition
from server.store.live import live_channel, publish_points
from server.store.principals import ADMIN
from tests.factories import make_job
from tests.server.conftest import REDIS_DOWN_URL, make_settings
from tests.server.sse_client import EventReader, serve

READ_TIMEOUT_S = 10.0
#: a short SQL poll: these streams learn of the end from SQL alone
SHORT_POLL_S = 0.2


def _points(n: int, start: int = 0) -> list[MetricPoint]:
    return [MetricPoint(phase="k_only", epoch=1, step=start + i, key=TRAIN_LOSS, value=float(start + i))
            for i in range(n)]


def _events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            events.append(fields)
    return events


@contextmanager
def _stream(base_url: str, job_id: str) -> Iterator[EventReader]:
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(READ_TIMEOUT_S)) as client, \
            client.stream("GET", f"/v1/jobs/{job_id}/metrics/stream") as response:
        assert response.status_code == 200
        yield EventReader(response)


def _state(event: dict[str, str] | None) -> dict[str, object]:
    assert event is not None and event["event"] == "state", event
    return json.loads(event["data"])  # type: ignore[no-any-return]


def _warnings(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == metrics_route.__name__ and r.getMessage().startswith(prefix)]


# ---------------------------------------------------------------------------------------------- finished jobs


@pytest.mark.parametrize(("message", "reported"), [("boom: the loss diverged", "boom: the loss diverged"), (None, "")])
def test_failed_job_stream_reports_the_reason_and_message(
    client: TestClient, api_session: Session, message: str | None, reported: str
) -> None:
    job = make_job(api_session, JobState.RUNNING)
    transition(api_session, job.id, JobState.FAILED, principal=ADMIN, lease_token=job.lease_token,
               failure_reason=FailureReason.TRAINING_ERROR, message=message)
    events = _events(client.get(f"/v1/jobs/{job.id}/metrics/stream").text)
    assert [_state(e) for e in events] == [
        {"state": "FAILED", "failure": {"reason": "TRAINING_ERROR", "message": reported}}
    ]


def test_replay_longer_than_one_page_sends_every_point(
    client: TestClient, api_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_route, "REPLAY_PAGE_POINTS", 3)
    job = make_job(api_session, JobState.RUNNING)
    append_points(api_session, job.id, _points(7), lease_token=job.lease_token)
    transition(api_session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
    events = _events(client.get(f"/v1/jobs/{job.id}/metrics/stream").text)
    # the state comes with the first page; the stream ends once the last page is sent
    assert [e.get("id") for e in events] == ["1", "2", "3", None, "4", "5", "6", "7"]
    assert _state(events[3])["state"] == "SUCCEEDED"


# ---------------------------------------------------------------------------------------------- live streams


def test_job_that_ends_without_a_state_message_is_ended_by_the_sql_poll(
    app: FastAPI, api_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. the reaper failed it: nothing was published, the stream learns it from SQL within the poll interval
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", SHORT_POLL_S)
    job = make_job(api_session, JobState.RUNNING)
    with serve(app) as base_url, _stream(base_url, job.id) as events:
        assert _state(events.next())["state"] == "RUNNING"
        append_points(api_session, job.id, _points(2), lease_token=job.lease_token)
        transition(api_session, job.id, JobState.FAILED, principal=ADMIN, failure_reason=FailureReason.WORKER_LOST,
                   message="lost")
        rest = [events.next(), events.next(), events.next()]
        assert [e["event"] for e in rest[:2]] == ["metric", "metric"]  # type: ignore[index]
        assert _state(rest[2]) == {"state": "FAILED", "failure": {"reason": "WORKER_LOST", "message": "lost"}}
        assert events.next() is None


def test_stream_with_redis_down_polls_sql_and_says_so(
    tmp_path: Path, job_queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", SHORT_POLL_S)
    app = create_app(make_settings(tmp_path, job_queue, redis_url=REDIS_DOWN_URL))
    caplog.set_level(logging.WARNING, logger=metrics_route.__name__)
    with app.state.session_factory() as session:
        job = make_job(session, JobState.RUNNING)
        with serve(app) as base_url, _stream(base_url, job.id) as events:
            assert _state(events.next())["state"] == "RUNNING"
            append_points(session, job.id, _points(1), lease_token=job.lease_token)
            transition(session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
            assert events.next()["id"] == "1"  # type: ignore[index]
            assert _state(events.next())["state"] == "SUCCEEDED"
            assert events.next() is None
    channel = live_channel(job.id)
    assert len(_warnings(caplog, f"live feed {channel} unavailable, polling only: ")) == 1


def test_stream_that_loses_redis_goes_on_polling_and_says_so_once(
    tmp_path: Path, job_queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.fault.conftest import RedisServer  # a private redis-server that this test may stop

    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", SHORT_POLL_S)
    private = RedisServer(tmp_path)
    private.start()
    try:
        app = create_app(make_settings(tmp_path, job_queue, redis_url=private.url))
        caplog.set_level(logging.WARNING, logger=metrics_route.__name__)
        with app.state.session_factory() as session:
            job = make_job(session, JobState.RUNNING)
            with serve(app) as base_url, _stream(base_url, job.id) as events:
                assert _state(events.next())["state"] == "RUNNING"
                private.shutdown_nosave()
                append_points(session, job.id, _points(1), lease_token=job.lease_token)
                transition(session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
                assert events.next()["id"] == "1"  # type: ignore[index]
                assert _state(events.next())["state"] == "SUCCEEDED"
                assert events.next() is None
    finally:
        private.stop()
    lost = _warnings(caplog, f"live feed {live_channel(job.id)} lost, polling only: ")
    assert len(lost) == 1, lost
    assert len(lost[0]) > len(f"live feed {live_channel(job.id)} lost, polling only: "), "the error is named"


def test_malformed_live_message_is_logged_and_skipped(
    app: FastAPI, api_session: Session, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=metrics_route.__name__)
    job = make_job(api_session, JobState.RUNNING)
    with serve(app) as base_url, _stream(base_url, job.id) as events:
        assert _state(events.next())["state"] == "RUNNING"
        assert redis_client.publish(live_channel(job.id), "{not json") == 1
        stored = append_points(api_session, job.id, _points(1), lease_token=job.lease_token)
        publish_points(redis_client, job.id, stored)
        assert events.next()["id"] == "1"  # type: ignore[index]
        transition(api_session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
        from server.store.live import publish_state

        publish_state(redis_client, job.id, JobState.SUCCEEDED)
        assert _state(events.next())["state"] == "SUCCEEDED"
    prefix = f"ignoring malformed live message on {live_channel(job.id)}: "
    malformed = _warnings(caplog, prefix)
    assert len(malformed) == 1 and len(malformed[0]) > len(prefix), malformed
