"""Health and monitoring routes (ARCHITECTURE.md, "HTTP API").

`/healthz` is liveness (no I/O, always 200); `/readyz` checks the database (`SELECT 1`) and Redis (`PING`,
short timeout) and answers a 503 problem naming what is down; `/metrics` is Prometheus text computed at scrape
time by a custom collector (jobs by state, queue depth = waiting messages of each job queue over all
priorities, non-finite steps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from server.deps import RedisDep, authenticate
from server.dispatch import all_job_queues, queue_depth
from server.errors import NotReady, problem_responses
from server.store.db import ping_database
from server.store.job_queries import count_by_state, total_nonfinite_steps

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


class JobsCollector(Collector):
    """Prometheus gauges read from the store and Redis at every scrape (no state in the API process)."""

    def __init__(self, session_factory: sessionmaker[Session], redis_client: redis.Redis, queue_prefix: str) -> None:
        self._session_factory = session_factory
        self._redis = redis_client
        self._queues = all_job_queues(queue_prefix)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db_up = GaugeMetricFamily("ris_jobs_database_up", "1 if the job database answered this scrape")
        try:
            with self._session_factory() as session:
                counts, nonfinite = count_by_state(session), total_nonfinite_steps(session)
            jobs = GaugeMetricFamily("ris_jobs_jobs", "Jobs in the store by state", labels=["state"])
            for state, n in counts.items():
                jobs.add_metric([state.value], n)
            yield jobs
            yield GaugeMetricFamily(
                "ris_jobs_nonfinite_steps", "Skipped non-finite training steps over stored jobs", value=nonfinite
            )
            db_up.add_metric([], 1)
        except SQLAlchemyError as exc:
            log.warning("metrics scrape: database unavailable: %s", exc)
            db_up.add_metric([], 0)
        yield db_up
        yield from self._queue_metrics()

    def _queue_metrics(self) -> Iterator[GaugeMetricFamily]:
        redis_up = GaugeMetricFamily("ris_jobs_redis_up", "1 if Redis answered this scrape")
        try:
            gauge = GaugeMetricFamily("ris_jobs_queue_depth", "Messages waiting in a job queue", labels=["queue"])
            for queue in self._queues:
                gauge.add_metric([queue], queue_depth(self._redis, queue))
            yield gauge
            redis_up.add_metric([], 1)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape: Redis unavailable: %s", exc)
            redis_up.add_metric([], 0)
        yield redis_up


def make_registry(session_factory: sessionmaker[Session], redis_client: redis.Redis,
                  queue_prefix: str) -> CollectorRegistry:
    """A registry of this app's own (not the process-global one, so several apps can coexist in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(session_factory, redis_client, queue_prefix))
    return registry


@router.get("/healthz", operation_id="read_health")
def read_health() -> dict[str, str]:
    """Liveness: the process answers. No I/O."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="read_readiness", responses=problem_responses(503))
def read_readiness(request: Request, redis_client: RedisDep) -> dict[str, object]:
    """Readiness: the database answers `SELECT 1` and Redis answers `PING`."""
    checks: dict[str, str] = {}
    try:
        ping_database(request.app.state.session_factory)
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis_client.ping()
        checks["redis"] = "ok"
    except (redis.RedisError, OSError) as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    if any(state != "ok" for state in checks.values()):
        raise NotReady(checks)
    return {"status": "ready", "checks": checks}


@router.get(
    "/metrics", operation_id="read_prometheus_metrics", dependencies=[Depends(authenticate)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def read_prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition, computed at scrape time."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


