"""Fixtures for server tests: store engines on SQLite and PostgreSQL, sessions, artifact stores.

The store tests run on both databases (`db_engine` is parametrized); PostgreSQL tests use a schema of
their own per test session and skip, with the reason, when the server is unreachable (fail under CI=true).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from server.main import create_app
from server.settings import Settings
from server.store import ArtifactStore, create_schema, make_engine, make_session_factory
from server.store.models import Base
from tests.server.sse_client import serve
from tests.services import PG_URL, reachable_pg_url, redis_problem, service_missing

with warnings.catch_warnings():  # starlette asks for httpx2; the httpx-based client works the same here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    """An engine on a fresh schema of the test database, dropped at the end of the session."""
    url, reason = reachable_pg_url()
    if url is None:
        service_missing("PostgreSQL", PG_URL, reason)
    schema = f"ris_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{url}?options=-csearch_path%3D{schema}")
    create_schema(engine)
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The store's engine on SQLite (a fresh file) or PostgreSQL (emptied after each test)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
        create_schema(engine)
        yield engine
        engine.dispose()
        return
    engine = request.getfixturevalue("pg_engine")
    yield engine
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))


@pytest.fixture
def session(db_engine: Engine) -> Iterator[Session]:
    factory = make_session_factory(db_engine)
    with factory() as s:
        yield s


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


# ---------------------------------------------------------------------------------------------- API fixtures

REDIS_TEST_URL = "redis://127.0.0.1:6379/14"  # db 14 is ours; another suite uses db 15
#: A port where nothing listens: a Redis that is down.
REDIS_DOWN_URL = "redis://127.0.0.1:1/14"


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    problem = redis_problem(REDIS_TEST_URL)
    if problem is not None:
        service_missing("Redis", REDIS_TEST_URL, problem)
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    yield client
    client.close()


@pytest.fixture(scope="session")
def job_queue(redis_client: redis.Redis) -> Iterator[str]:
    """A queue name of this test session alone, deleted at the end (with kombu's binding keys)."""
    name = f"test-jobs-{uuid.uuid4().hex[:12]}"
    yield name
    redis_client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")


def make_settings(tmp_path: Path, job_queue: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'api.sqlite'}", "redis_url": REDIS_TEST_URL,
        "artifact_dir": tmp_path / "artifacts", "job_queue": job_queue, "api_keys": (),
        # the service worlds of other test packages export ALLOW_FAULT_INJECTION=true for the whole session;
        # the API's own tests start from the production default
        "allow_fault_injection": False,
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, job_queue: str) -> Settings:
    return make_settings(tmp_path, job_queue)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn server (`tests.server.sse_client.serve`): its base URL, for streaming reads."""
    with serve(app) as base_url:
        yield base_url


@pytest.fixture
def api_session(app: FastAPI) -> Iterator[Session]:
    """A session on the app's own database, for arranging rows through the store."""
    with app.state.session_factory() as s:
        yield s


@pytest.fixture
def api_artifacts(app: FastAPI) -> ArtifactStore:
    return app.state.artifacts  # type: ignore[no-any-return]
