"""The reaper's re-dispatch against the real Redis broker: lost messages are re-sent, live ones are not."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from api_schemas import JobKind
from server.dispatch import all_job_queues, enqueue_job, job_queue_name, make_producer
from server.settings import Settings
from server.store import create_job, create_schema, make_engine, make_session_factory
from server.store.principals import ANONYMOUS
from tests.integration.conftest import REDIS_TEST_URL, is_terminal, poll
from tests.worker.configs import quick_diagnostic_config
from worker.reaper import Reaper, ReapReport

pytestmark = pytest.mark.integration


def _reaper(settings: Settings) -> Reaper:
    engine = make_engine(settings.database_url)
    create_schema(engine)
    return Reaper(
        settings, sessions=make_session_factory(engine), producer=make_producer(settings),
        redis=Redis.from_url(settings.redis_url), redispatch_after_s=0.0,
    )


def _create_queued_job(reaper: Reaper, name: str) -> str:
    """A committed QUEUED job, with no message sent for it."""
    with reaper._sessions() as s:
        return create_job(s, kind=JobKind.DIAGNOSTIC, name=name, config=quick_diagnostic_config(), max_attempts=2,
                          principal=ANONYMOUS).id


def _sweep_until(reaper: Reaper, job_id: str, *, deadline_s: float = 10.0) -> ReapReport:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        report = reaper.reap_once()
        if job_id in report.redispatched:
            return report
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} was not re-dispatched within {deadline_s} s")


def test_reaper_redispatches_queued_job_whose_enqueue_failed(client: TestClient, service_env: Settings) -> None:
    reaper = _reaper(service_env)
    job_id = _create_queued_job(reaper, "lost")  # as if the API's enqueue failed while Redis was down
    _sweep_until(reaper, job_id)
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "SUCCEEDED"
    assert body["attempt"] == 1


def test_reaper_leaves_queued_job_with_a_waiting_message_alone(tmp_path: Path, service_env: Settings) -> None:
    # Its own store and a queue no worker consumes: the message waits in Redis, so it is live.
    settings = service_env.model_copy(update={
        "database_url": f"sqlite:///{tmp_path / 'own.sqlite'}", "job_queue": f"nobody-{uuid.uuid4().hex[:8]}",
    })
    reaper = _reaper(settings)
    job_id = _create_queued_job(reaper, "waiting")
    enqueue_job(make_producer(settings), job_id, job_queue_name(settings.job_queue, "gpu"))
    # redispatch_after_s is 0: the job is overdue at once, so only its waiting message keeps it from a re-send
    try:
        assert job_id not in reaper.reap_once().redispatched
    finally:
        Redis.from_url(REDIS_TEST_URL).delete(*all_job_queues(settings.job_queue))
