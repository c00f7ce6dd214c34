"""Integration fixtures: real Redis (db 15), a real embedded Celery worker, the FastAPI app on the same SQLite
file and artifact directory: no mocks.

Every test session gets its own queue name, so concurrent runs on one Redis never take each other's messages.
The worker runs in a thread (`start_worker`, solo pool): Celery time limits and terminate do not apply here;
the fault tests run real prefork worker processes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient
from redis import Redis

from server.settings import Settings, get_settings
from tests.services import redis_problem, service_missing

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"
#: One queue per test session: parallel runs on the same Redis never collide.
TEST_QUEUE = f"ris-test-{uuid.uuid4().hex[:12]}"
#: Deadline of a poll for a tiny job's next state, seconds (jobs take ~1-3 s on a CPU).
POLL_DEADLINE_S = 90.0


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The environment every component reads (API, task body, reaper), through `get_settings()`."""
    problem = redis_problem(REDIS_TEST_URL)
    if problem is not None:
        service_missing("Redis", REDIS_TEST_URL, problem)
    root = tmp_path_factory.mktemp("service")
    env = {
        "DATABASE_URL": f"sqlite:///{root / 'jobs.sqlite'}",
        "REDIS_URL": REDIS_TEST_URL,
        "ARTIFACT_DIR": str(root / "artifacts"),
        "JOB_QUEUE": TEST_QUEUE,
        "API_KEYS": "",
        "HEARTBEAT_INTERVAL_S": "0.5",
        "LEASE_TIMEOUT_S": "10",
        "CANCEL_GRACE_S": "30",
        "METRICS_FLUSH_INTERVAL_S": "0.2",
        "ALLOW_FAULT_INJECTION": "true",  # slow and NaN-injected jobs through config.debug
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    from server.store import create_schema, make_engine

    engine = make_engine(settings.database_url)
    create_schema(engine)
    engine.dispose()
    yield settings
    mp.undo()
    get_settings.cache_clear()
    Redis.from_url(REDIS_TEST_URL).delete(TEST_QUEUE, f"{TEST_QUEUE}.gpu", f"{TEST_QUEUE}.cpu")


@pytest.fixture(scope="session")
def celery_worker(service_env: Settings) -> Iterator[Any]:
    """A real Celery worker (thread, solo pool) consuming this session's queue from the real Redis."""
    from server.dispatch import all_job_queues
    from worker.app import app, configure_app

    configure_app(app, service_env)
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False, loglevel="WARNING",
                      queues=all_job_queues(TEST_QUEUE), shutdown_timeout=30.0) as worker:
        yield worker


@pytest.fixture(scope="session")
def client(service_env: Settings, celery_worker: Any) -> Iterator[TestClient]:
    from server.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


def poll(client: TestClient, url: str, until: Callable[[dict[str, Any]], bool], *,
         deadline_s: float = POLL_DEADLINE_S) -> dict[str, Any]:
    """GET `url` until `until(body)` holds; fails with the last body when the deadline passes (no fixed sleeps)."""
    end = time.monotonic() + deadline_s
    body: dict[str, Any] = {}
    while time.monotonic() < end:
        response = client.get(url)
        response.raise_for_status()
        body = response.json()
        if until(body):
            return body
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline_s} s; last body: {body}")


def is_terminal(body: dict[str, Any]) -> bool:
    return body["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def all_points(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    """Every metric point of a job, following `next_since_seq`."""
    points: list[dict[str, Any]] = []
    since = 0
    while True:
        page = client.get(f"/v1/jobs/{job_id}/metrics", params={"since_seq": since, "limit": 10_000})
        page.raise_for_status()
        body = page.json()
        points.extend(body["points"])
        if body.get("next_since_seq") is None:
            return points
        since = body["next_since_seq"]


def submit(client: TestClient, body: dict[str, Any]) -> tuple[str, httpx.Response]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"], response


def diagnostic(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A POST body for a diagnostic job with `config` (a tiny_config()) and top-level overrides."""
    return {"kind": "diagnostic", "name": "integration", "config": config, **overrides}
