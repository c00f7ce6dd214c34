"""CI never goes green without its services: with CI=true a PostgreSQL or Redis that does not answer stops the
run with an error that names it; outside CI the tests that need it are skipped, with the reason. Each case
runs pytest in a subprocess with the service pointed at a closed port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import service_missing

REPO = Path(__file__).resolve().parents[1]
#: One PostgreSQL store test (its postgres parameter) — the cheapest test that needs the service.
PG_TEST = "tests/server/store/test_jobs.py::test_create_job_is_queued_with_creation_event"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def _pytest(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )


def test_ci_run_without_postgres_fails_and_names_it() -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
    run = _pytest({"CI": "true", "DATABASE_URL_PG": url}, PG_TEST)
    out = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert f"PostgreSQL unreachable at {url}" in out
    assert "Redis unreachable" not in out
    assert "passed" not in out


def test_ci_run_without_redis_fails_and_names_it() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/15"
    run = _pytest({"CI": "true", "TEST_REDIS_URL": url}, "tests/test_layers.py")
    out = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert f"Redis unreachable at {url}" in out
    assert "PostgreSQL unreachable" not in out


def test_outside_ci_a_missing_postgres_skips_with_the_reason() -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
    run = _pytest({"DATABASE_URL_PG": url}, PG_TEST)
    out = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.OK, out
    assert "1 passed, 1 skipped" in out  # the SQLite parameter runs, the PostgreSQL one is skipped
    assert f"PostgreSQL unreachable at {url}" in out


def test_service_missing_fails_under_ci_and_skips_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fixtures' path (a service that goes away after the session started)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"Redis unreachable at redis://x: refused \(CI=true"):
        service_missing("Redis", "redis://x", "refused")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="^Redis unreachable at redis://x: refused$"):
        service_missing("Redis", "redis://x", "refused")
