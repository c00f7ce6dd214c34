"""The services the suite runs against (Redis, PostgreSQL, a redis-server binary) and what a missing one means.

Outside CI a missing service skips the tests that need it, with the reason. Under `CI=true` it fails them,
naming the service, and the session stops before the first test (tests/conftest.py): a CI run never goes green
because the tests that needed a service were skipped.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

#: The PostgreSQL database of the store tests (a schema of its own per test session).
PG_URL = os.environ.get("DATABASE_URL_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: The Redis the session-start check probes (the suites use databases 14 and 15 of the same server).
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def in_ci() -> bool:
    """Whether this run is CI's (CI=true, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def service_missing(service: str, where: str, reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip (outside CI) or fail (under CI=true) the test that needs `service`, naming it and why."""
    message = f"{service} unreachable at {where}: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the suite needs {service}; start it before the tests)", pytrace=False)
    pytest.skip(message, allow_module_level=allow_module_level)


def redis_problem(url: str) -> str | None:
    """None when a Redis answers PING at `url`, else why not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
        return None
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()


def reachable_pg_url(url: str = PG_URL) -> tuple[str | None, str]:
    """The first PostgreSQL URL (user postgres, then root) that accepts a connection, and why not if none."""
    candidates = [url, url.replace("://postgres@", "://root@")]
    reason = ""
    for candidate in dict.fromkeys(candidates):
        probe = create_engine(candidate, connect_args={"connect_timeout": 3})
        try:
            with probe.connect() as conn:
                conn.execute(text("SELECT 1"))
            return candidate, ""
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        finally:
            probe.dispose()
    return None, reason


def missing_in_ci() -> list[str]:
    """Under CI: one line per service that does not answer (empty when all do)."""
    missing = []
    url, reason = reachable_pg_url()
    if url is None:
        missing.append(f"PostgreSQL unreachable at {PG_URL}: {reason}")
    problem = redis_problem(REDIS_URL)
    if problem is not None:
        missing.append(f"Redis unreachable at {REDIS_URL}: {problem}")
    return missing
