"""Metric routes (ARCHITECTURE.md, "HTTP API", "The life of a metric"): paged history and the live SSE stream.

The stream subscribes to `job:{id}:live` first, then replays from SQL after `Last-Event-ID`, forwards live
points whose seq follows the last one sent, and re-reads SQL on a gap, on a state message, and at least every
POLL_INTERVAL_S (so a lost pub/sub message, or Redis being down, never stalls it). It ends after the event
that reports a terminal state. Event ids are metric seqs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, cast

import anyio
import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api_schemas import MetricsPage, StoredMetricPoint
from api_schemas.jobs import JobState
from server.deps import PrincipalDep, SessionDep, SettingsDep
from server.errors import problem_responses
from server.store import get_job, read_points
from server.store.live import LiveMetrics, LiveState, live_channel, parse_live_message
from server.store.metrics import MAX_PAGE_POINTS
from server.store.principals import Principal

router = APIRouter(prefix="/v1/jobs", tags=["metrics"])
log = logging.getLogger(__name__)

#: Longest time the stream goes without re-reading the job from SQL, seconds.
POLL_INTERVAL_S = 2.0
#: Comment ping interval that keeps proxies from closing an idle stream, seconds.
PING_INTERVAL_S = 15.0
#: Points read from SQL per replay step.
REPLAY_PAGE_POINTS = 1000
_PROBLEMS = problem_responses(401, 404, 422)


@router.get("/{job_id}/metrics", operation_id="read_metrics", responses=_PROBLEMS)
def read_metrics(
    job_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    since_seq: Annotated[int, Query(ge=0, description="return points with seq > since_seq")] = 0,
    keys: Annotated[list[str] | None, Query(description="metric keys; repeat or comma-separate")] = None,
    phase: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_POINTS)] = 1000,
    max_points: Annotated[int | None, Query(ge=1, le=100_000, description="per-key downsampling")] = None,
) -> MetricsPage:
    """Metric history in seq order; continue with `since_seq=next_since_seq`."""
    wanted = [k for item in keys for k in item.split(",") if k] if keys else None
    return read_points(
        session, job_id, principal=principal, since_seq=since_seq, keys=wanted, phase=phase, limit=limit,
        max_points=max_points,
    )


@dataclass(frozen=True)
class _Snapshot:
    points: list[StoredMetricPoint]
    more: bool
    state: JobState
    failure: dict[str, str] | None


def _read_snapshot(factory: sessionmaker[Session], job_id: str, since_seq: int, principal: Principal) -> _Snapshot:
    """Points after `since_seq` (one page) and the job's state, read in one short session."""
    with factory() as session:
        page = read_points(session, job_id, principal=principal, since_seq=since_seq, limit=REPLAY_PAGE_POINTS)
        job = get_job(session, job_id, principal=principal)
        failure = None
        if job.failure_reason is not None:
            failure = {"reason": job.failure_reason, "message": job.failure_message or ""}
        return _Snapshot(page.points, page.next_since_seq is not None, JobState(job.state), failure)


def _check_job(factory: sessionmaker[Session], job_id: str, principal: Principal) -> None:
    """Raises JobNotFound."""
    with factory() as session:
        get_job(session, job_id, principal=principal)


def _metric_event(point: StoredMetricPoint) -> ServerSentEvent:
    return ServerSentEvent(data=point.model_dump_json(), event="metric", id=str(point.seq))


def _state_event(snapshot: _Snapshot) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps({"state": snapshot.state.value, "failure": snapshot.failure}), event="state")


class _LiveFeed:
    """The job's pub/sub channel; degrades to 'no messages' when Redis is unreachable."""

    def __init__(self, redis_url: str, job_id: str) -> None:
        self._client = aioredis.from_url(redis_url, socket_connect_timeout=1.0)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._channel = live_channel(job_id)
        self.up = False

    async def subscribe(self) -> None:
        try:
            await self._pubsub.subscribe(self._channel)
            self.up = True
        except (redis.RedisError, OSError) as exc:
            log.warning("live feed %s unavailable, polling only: %s", self._channel, exc)

    async def next(self, timeout_s: float) -> LiveMetrics | LiveState | None:
        """The next message within `timeout_s` seconds, or None (timeout, bad message, Redis gone)."""
        if not self.up:
            await anyio.sleep(timeout_s)
            return None
        try:
            message = await self._pubsub.get_message(timeout=timeout_s)
        except (redis.RedisError, OSError) as exc:
            log.warning("live feed %s lost, polling only: %s", self._channel, exc)
            self.up = False
            return None
        if message is None or message.get("type") != "message":
            return None
        try:
            return parse_live_message(message["data"])
        except ValueError as exc:
            log.warning("ignoring malformed live message on %s: %s", self._channel, exc)
            return None

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):  # runs while the stream is being cancelled
            try:
                # some redis-py releases leave it unannotated, others do not
                await cast(Any, self._pubsub).aclose()
                await self._client.aclose()
            except (redis.RedisError, OSError) as exc:
                log.debug("closing live feed %s: %s", self._channel, exc)


async def _metric_stream(
    factory: sessionmaker[Session], redis_url: str, job_id: str, last_seq: int, principal: Principal
) -> AsyncIterator[ServerSentEvent]:
    feed = _LiveFeed(redis_url, job_id)
    await feed.subscribe()  # subscribe before the replay: nothing published in between is lost
    sent_state: JobState | None = None
    need_db, last_read = True, 0.0
    try:
        while True:
            if need_db or time.monotonic() - last_read >= POLL_INTERVAL_S:
                snap = await run_in_threadpool(_read_snapshot, factory, job_id, last_seq, principal)
                last_read = time.monotonic()
                for point in snap.points:
                    yield _metric_event(point)
                    last_seq = point.seq
                if snap.state != sent_state:
                    yield _state_event(snap)
                    sent_state = snap.state
                if snap.state.is_terminal() and not snap.more:
                    return
                need_db = snap.more
                if need_db:
                    continue
            message = await feed.next(max(0.05, POLL_INTERVAL_S - (time.monotonic() - last_read)))
            if isinstance(message, LiveState):
                need_db = True
            elif isinstance(message, LiveMetrics):
                fresh = [p for p in message.points if p.seq > last_seq]  # dedupe what the replay already sent
                if fresh and fresh[0].seq != last_seq + 1:
                    need_db = True  # a gap: missed a message; SQL has everything in order
                    continue
                for point in fresh:
                    yield _metric_event(point)
                    last_seq = point.seq
    finally:
        await feed.close()


@router.get(
    "/{job_id}/metrics/stream", operation_id="stream_metrics",
    responses={**_PROBLEMS, 200: {"content": {"text/event-stream": {}}, "description": "SSE: metric, state"}},
)
async def stream_metrics(
    job_id: str,
    request: Request,
    settings: SettingsDep,
    principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^\d{1,18}$")] = None,
    since_seq: Annotated[int | None, Query(ge=0, description="like Last-Event-ID, for clients without it")] = None,
) -> EventSourceResponse:
    """Server-sent events: `metric` (id = seq) and `state`; resumes after Last-Event-ID; ends at a terminal
    state."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    await run_in_threadpool(_check_job, factory, job_id, principal)  # 404 before the stream starts
    start = int(last_event_id) if last_event_id is not None else (since_seq or 0)
    return EventSourceResponse(
        _metric_stream(factory, settings.redis_url, job_id, start, principal), ping=PING_INTERVAL_S,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
