"""When the SSE stream reads SQL: for each further page of a replay and on a gap in the live seqs at once, and
otherwise only once per poll interval — a live point, or a second delivery of one, costs no query. Real uvicorn
server and Redis; the stream's reads are the statements on the metric table, counted on the app's own engine.
Nothing here sleeps: each step waits for the event it needs, and a read that gets nothing for READ_TIMEOUT_S fails
the test."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from api_schemas import JobState, MetricPoint, StoredMetricPoint
from api_schemas.metrics import TRAIN_LOSS
from server.routes import metrics as metrics_route
from server.store import append_points, transition, utcnow
from server.store.live import publish_points, publish_state
from server.store.models import JobRow
from server.store.principals import ADMIN
from tests.factories import make_job
from tests.server.sse_client import EventReader, metric_stream

READ_TIMEOUT_S = 10.0
#: the SQL poll of the stream during these tests: far longer than any read may wait
POLL_INTERVAL_S = 3600.0


def _points(n: int, start: int = 0) -> list[MetricPoint]:
    return [MetricPoint(phase="k_only", epoch=1, step=start + i, key=TRAIN_LOSS, value=0.25 * (start + i))
            for i in range(n)]


def _pending(seqs: range) -> list[StoredMetricPoint]:
    """Points as the worker publishes them, before (or without) the store's commit being visible."""
    points = _points(len(seqs), start=seqs.start - 1)
    return [StoredMetricPoint(seq=s, ts=utcnow(), **p.model_dump()) for s, p in zip(seqs, points, strict=True)]


@contextmanager
def _metric_reads(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements on the metric table while the block runs (the stream's replay reads)."""
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "metric_points" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


@contextmanager
def _stream(base_url: str, job_id: str) -> Iterator[EventReader]:
    with metric_stream(base_url, job_id, READ_TIMEOUT_S) as events:
        yield events


def _running(session: Session) -> tuple[JobRow, str]:
    """A RUNNING job and its lease."""
    job = make_job(session, JobState.RUNNING)
    assert job.lease_token is not None
    return job, job.lease_token


def _kind_id(e: dict[str, str] | None) -> tuple[str, str | None]:
    assert e is not None, "the stream ended early"
    return e["event"], e.get("id")


def _finish(
    events: EventReader, api_session: Session, redis_client: redis.Redis, job_id: str, lease: str
) -> None:
    transition(api_session, job_id, JobState.SUCCEEDED, principal=ADMIN, lease_token=lease)
    publish_state(redis_client, job_id, JobState.SUCCEEDED)
    final = events.next()
    assert final is not None and json.loads(final["data"])["state"] == "SUCCEEDED"
    assert events.next() is None


def test_live_points_and_their_duplicates_cost_no_sql_read(
    served: str, app: FastAPI, api_session: Session, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the poll interval: at least ten minutes, longer than this test, and as long as the monotonic clock's
    # reading, so that an interval measured from the clock's zero instead of from the last read would be over
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", max(time.monotonic(), 600.0))
    job, lease = _running(api_session)
    with _stream(served, job.id) as events:
        assert _kind_id(events.next()) == ("state", None)  # subscribed and replayed
        with _metric_reads(app.state.engine) as reads:
            assert publish_points(redis_client, job.id, _pending(range(1, 3))) == 1
            assert [_kind_id(events.next()) for _ in range(2)] == [("metric", "1"), ("metric", "2")]
            publish_points(redis_client, job.id, _pending(range(2, 3)))  # the last point sent, delivered again
            publish_points(redis_client, job.id, _pending(range(3, 4)))
            # messages are handled in order: anything the first two caused has happened by the time 3 arrives
            assert _kind_id(events.next()) == ("metric", "3")
            assert reads == []
        append_points(api_session, job.id, _points(3), lease_token=lease)
        _finish(events, api_session, redis_client, job.id, lease)


def test_gap_in_live_seqs_is_filled_from_sql_at_once(
    served: str, app: FastAPI, api_session: Session, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the messages of points 1 and 2 were lost; the message of point 3 shows the gap, SQL has all three
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", POLL_INTERVAL_S)
    job, lease = _running(api_session)
    with _stream(served, job.id) as events:
        assert _kind_id(events.next()) == ("state", None)
        stored = append_points(api_session, job.id, _points(3), lease_token=lease)
        with _metric_reads(app.state.engine) as reads:
            assert publish_points(redis_client, job.id, stored[2:]) == 1
            got = [events.next() for _ in range(3)]
            assert [_kind_id(e) for e in got] == [("metric", "1"), ("metric", "2"), ("metric", "3")]
            assert [json.loads(e["data"])["value"] for e in got] == [0.0, 0.25, 0.5]  # type: ignore[index]
            assert len(reads) == 1
        _finish(events, api_session, redis_client, job.id, lease)


def test_replay_of_a_running_job_reads_every_page_without_waiting_for_the_poll(
    served: str, api_session: Session, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", POLL_INTERVAL_S)
    monkeypatch.setattr(metrics_route, "REPLAY_PAGE_POINTS", 3)
    job, lease = _running(api_session)
    append_points(api_session, job.id, _points(7), lease_token=lease)
    with _stream(served, job.id) as events:
        replay = [_kind_id(events.next()) for _ in range(8)]
        assert replay == [("metric", "1"), ("metric", "2"), ("metric", "3"), ("state", None),
                          ("metric", "4"), ("metric", "5"), ("metric", "6"), ("metric", "7")]
        _finish(events, api_session, redis_client, job.id, lease)
