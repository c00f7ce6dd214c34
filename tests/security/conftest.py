"""Fixtures for the security tests: the API with API keys configured (on the server tests' Redis db and a
queue of this session), and a walk over every route the app serves."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from server.main import create_app
from tests.server.conftest import job_queue, make_settings, redis_client  # noqa: F401  (fixtures)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

#: The configured keys; long and distinctive, so that a search of every log line for them cannot miss.
GOOD_KEY = "sk-good-7f3c9a1e5b2d4c6e8a0b1c2d3e4f5a6b"
OTHER_KEY = "sk-other-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WRONG_KEY = "sk-wrong-deadbeefdeadbeefdeadbeefdeadbeef"
#: Routes that stay open with keys configured (ARCHITECTURE.md, "HTTP API"): health, readiness, and the dashboard and
#: docs pages (static files that hold no data; the data they show comes from the keyed /v1 routes).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/redoc"})


@pytest.fixture
def secured_app(tmp_path: Path, job_queue: str, redis_client: Any) -> FastAPI:  # noqa: F811
    return create_app(make_settings(tmp_path, job_queue, api_keys=f"{GOOD_KEY},{OTHER_KEY}",
                                    max_queued_jobs_per_key=3))


@pytest.fixture
def secured(secured_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(secured_app, raise_server_exceptions=False) as client:
        yield client


def served_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path template) the app answers, included routers flattened."""
    out: list[tuple[str, str]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if contexts is not None:
                walk(list(contexts()))
            elif getattr(route, "methods", None) and getattr(route, "path", None):
                out.extend((m, route.path) for m in route.methods)

    walk(list(app.routes))
    return sorted(set(out))
