"""The job store's PostgreSQL restarted mid-job (a private server this test starts, stops and starts again):
the API answers 503 problem+json with Retry-After and /readyz says 503 while it is down; the worker waits out
the outage (its metric flushes, checkpoint records and terminal write retry with bounded backoff); afterwards no
acknowledged metric point, checkpoint record or state change is lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api_schemas import JobState
from tests.fault.conftest import Api, Service, acknowledged, audit, slow_training_config, wait_for
from tests.fault.postgres_server import PostgresServer, postgres_bin_dir

pytestmark = pytest.mark.fault


@pytest.fixture
def private_pg() -> Iterator[PostgresServer]:
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def pg_service(make_service: Callable[..., Service], private_pg: PostgresServer) -> Service:
    # A lease that outlives the outage: this test is about the writes of one attempt surviving it.
    return make_service(DATABASE_URL=private_pg.url, LEASE_TIMEOUT_S="60", STORE_RETRY_DEADLINE_S="120")


def _status(method: str, url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return httpx.request(method, url, timeout=10.0, **kwargs)
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_mid_job_loses_nothing_acknowledged(pg_service: Service, private_pg: PostgresServer,
                                                             mode: str, evidence: Any) -> None:
    svc = pg_service
    api: Api = svc.start_api()
    svc.start_reaper()
    svc.start_worker("w1")
    body = {"kind": "training", "config": slow_training_config(epochs=8)}
    job_id = httpx.post(f"{api.base_url}/v1/jobs", json=body, timeout=10.0).json()["id"]
    wait_for("metric points and a checkpoint", lambda: (a := acknowledged(svc, job_id)).checkpoints and a.points,
             deadline_s=120)
    before = acknowledged(svc, job_id)

    private_pg.stop(mode)
    down_at = time.monotonic()
    readyz = _status("GET", f"{api.base_url}/readyz")
    assert readyz is not None and readyz.status_code == 503
    write = _status("POST", f"{api.base_url}/v1/jobs", json=body)
    assert write is not None and write.status_code == 503, write and write.text
    assert write.headers["content-type"].startswith("application/problem+json")
    assert int(write.headers["Retry-After"]) >= 1
    assert "postgres" not in write.text.lower() and "127.0.0.1" not in write.text  # no driver text leaks
    read = _status("GET", f"{api.base_url}/v1/jobs/{job_id}")
    assert read is not None and read.status_code == 503
    time.sleep(3.0)  # the worker's flushes fail meanwhile and are retried
    private_pg.start()
    wait_for("/readyz 200 after the restart", lambda: (r := _status("GET", f"{api.base_url}/readyz")) is not None
             and r.status_code == 200, deadline_s=30)
    ready_s = time.monotonic() - down_at

    final = svc.wait_terminal(job_id, deadline_s=180)
    assert final.state == JobState.SUCCEEDED, final.failure_message
    assert final.attempt == 1  # the attempt rode out the outage; nothing was requeued
    recovered_s = time.monotonic() - down_at
    losses = audit(svc, job_id, before)
    losses.assert_none()
    assert "database unavailable" in svc.log_text("w1"), "the worker never had to retry a write"
    after = httpx.post(f"{api.base_url}/v1/jobs", json=body, timeout=10.0)
    assert after.status_code == 202
    evidence(f"PostgreSQL restart ({mode} stop, 3 s down) mid-job", 1, losses, [ready_s, recovered_s])
