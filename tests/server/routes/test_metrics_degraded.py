"""The SSE stream when things go wrong or get large: the failure it reports, a replay longer than one page, a job
that ends without a state message, Redis down from the start or lost mid-stream, and a malformed live message.
The streaming cases run on a real uvicorn server and read event by event (tests/server/sse_client.py)."""

from __future__ import annotations

import gc
import json
import logging
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
from server.store.live import live_channel, parse_live_message, publish_points
from server.store.principals import ADMIN
from tests.factories import make_job
from tests.server.conftest import REDIS_DOWN_URL, make_settings
from tests.server.sse_client import EventReader, metric_stream, serve

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
    with metric_stream(base_url, job_id, READ_TIMEOUT_S) as events:
        yield events


def _state(event: dict[str, str] | None) -> dict[str, object]:
    assert event is not None and event["event"] == "state", event
    return json.loads(event["data"])  # type: ignore[no-any-return]


def _warnings(caplog: pytest.LogCaptureFixture, prefix: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and r.name == metrics_route.__name__ and r.getMessage().startswith(prefix)]


def _names_a_redis_error(record: logging.LogRecord, prefix: str) -> bool:
    """The warning ends with the text of the Redis or socket error that caused it."""
    error = record.args[-1] if isinstance(record.args, tuple) and record.args else None
    return isinstance(error, redis.RedisError | OSError) and record.getMessage() == prefix + str(error)


def _assert_one_unavailable_warning(caplog: pytest.LogCaptureFixture, job_id: str) -> None:
    """Exactly one "live feed … unavailable, polling only" warning for the job, ending with its Redis error."""
    prefix = f"live feed {live_channel(job_id)} unavailable, polling only: "
    [unavailable] = _warnings(caplog, prefix)
    assert _names_a_redis_error(unavailable, prefix), unavailable.getMessage()


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
    _assert_one_unavailable_warning(caplog, job.id)


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
    prefix = f"live feed {live_channel(job.id)} lost, polling only: "
    lost = _warnings(caplog, prefix)
    assert len(lost) == 1, [r.getMessage() for r in lost]
    assert _names_a_redis_error(lost[0], prefix), lost[0].getMessage()


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
    with pytest.raises(ValueError) as parse_error:
        parse_live_message("{not json")
    prefix = f"ignoring malformed live message on {live_channel(job.id)}: "
    assert [r.getMessage() for r in _warnings(caplog, prefix)] == [prefix + str(parse_error.value)]


@contextmanager
def _unanswering_redis() -> Iterator[str]:
    """A Redis URL where a connect gets no answer, as behind a firewall that drops packets: a listening socket
    whose accept queue (of one) is full, so that the kernel drops further connection requests."""
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued.connect(listener.getsockname())
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/14"


def test_stream_gives_up_on_a_redis_that_does_not_answer_and_polls_sql(
    tmp_path: Path, job_queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the stream's connect timeout, not the kernel's (minutes), bounds the wait: the first event comes within
    # READ_TIMEOUT_S
    monkeypatch.setattr(metrics_route, "POLL_INTERVAL_S", SHORT_POLL_S)
    caplog.set_level(logging.WARNING, logger=metrics_route.__name__)
    with _unanswering_redis() as redis_url:
        app = create_app(make_settings(tmp_path, job_queue, redis_url=redis_url))
        with app.state.session_factory() as session:
            job = make_job(session, JobState.RUNNING)
            with serve(app) as base_url, _stream(base_url, job.id) as events:
                assert _state(events.next())["state"] == "RUNNING"
                transition(session, job.id, JobState.SUCCEEDED, principal=ADMIN, lease_token=job.lease_token)
                assert _state(events.next())["state"] == "SUCCEEDED"
                assert events.next() is None
    _assert_one_unavailable_warning(caplog, job.id)


def test_client_that_leaves_mid_stream_leaves_no_subscriber_and_no_open_connection(
    app: FastAPI, api_session: Session, redis_client: redis.Redis
) -> None:
    job = make_job(api_session, JobState.RUNNING)
    channel = live_channel(job.id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with serve(app) as base_url:
            with _stream(base_url, job.id) as events:
                assert _state(events.next())["state"] == "RUNNING"
                assert redis_client.pubsub_numsub(channel) == [(channel.encode(), 1)]
            # the client hung up while the stream waited for a message, which cancels the stream; the server's
            # shutdown waits for the stream's cleanup
        gc.collect()  # a Redis connection that the cleanup left open is closed, and reported, by its finalizer
    assert redis_client.pubsub_numsub(channel) == [(channel.encode(), 0)]
    unclosed = [str(w.message) for w in caught
                if issubclass(w.category, ResourceWarning) and str(w.message).startswith("unclosed Connection")]
    assert unclosed == []
