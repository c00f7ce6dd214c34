"""Fixtures of the client, CLI and dashboard tests: one live service for the whole package — a private
redis-server, a real uvicorn API process and a real prefork Celery worker on a SQLite store, with an API key
configured — built from the fault tests' process helpers. Jobs use tiny configs (seconds on a CPU)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from client import Client
from server.settings import Settings
from server.store import create_schema, make_engine, make_session_factory
from tests.fault.conftest import FAULT_ENV, REPO, RedisServer, Service
from tests.worker.configs import quick_diagnostic_config

#: The one API key of the live service.
API_KEY = "sk-client-tests-3f9a0c1d2e4b5a6978"
#: Timings of the live service: relaxed, since a browser shares the CPU with the worker.
LIVE_ENV = {
    **FAULT_ENV,
    "API_KEYS": API_KEY,
    "HEARTBEAT_INTERVAL_S": "1",
    "LEASE_TIMEOUT_S": "30",
    "REDISPATCH_AFTER_S": "60",
    "CHECKPOINT_INTERVAL_S": "0.5",
}


@dataclass
class Live:
    service: Service
    url: str

    def client(self, **kwargs: Any) -> Client:
        return Client(self.url, API_KEY, **kwargs)


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    redis = RedisServer(root)
    redis.start()
    values = {
        **LIVE_ENV,
        "DATABASE_URL": f"sqlite:///{root / 'jobs.sqlite'}",
        "REDIS_URL": redis.url,
        "ARTIFACT_DIR": str(root / "artifacts"),
        "JOB_QUEUE": f"client-{uuid.uuid4().hex[:8]}",
    }
    env = {**os.environ, **values, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    settings = Settings(**{k.lower(): v for k, v in values.items()})  # type: ignore[arg-type]
    engine = make_engine(settings.database_url)
    create_schema(engine)
    (root / "logs").mkdir()
    service = Service(env=env, settings=settings, sessions=make_session_factory(engine), log_dir=root / "logs",
                      redis=redis)
    try:
        api = service.start_api()
        service.start_worker("client")
        yield Live(service, api.base_url)
    finally:
        service.stop_all()
        redis.stop()
        engine.dispose()


@pytest.fixture(scope="package")
def finished_job(live: Live) -> str:
    """A tiny diagnostic that has SUCCEEDED (metrics, checkpoints, a report and logs to read)."""
    with live.client() as client:
        job = client.submit("diagnostic", quick_diagnostic_config(), name="client-finished")
        final = client.wait(job.id, timeout_s=300)
    assert final.state == "SUCCEEDED", final.failure
    return final.id


def slow_config(*, sleep_per_step_s: float = 0.2, n_train: int = 4096) -> dict[str, Any]:
    """A diagnostic that runs long enough to be cancelled or watched while it runs."""
    config = quick_diagnostic_config()
    config["data"]["n_train"] = n_train
    config["debug"] = {"sleep_per_step_s": sleep_per_step_s}
    return config
