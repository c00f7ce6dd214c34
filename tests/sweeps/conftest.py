"""Sweep tests run in the fault tests' world: a private redis-server, real prefork Celery workers (two for the
trials, one for the sweep drivers), a real reaper, and the API in process on the same store."""

from __future__ import annotations

from tests.fault.conftest import make_service, redis_server  # noqa: F401 (fixtures)
