"""Ephemeral job signals in Redis (ARCHITECTURE.md, "Where data lives"): live pub/sub and cancel flags. Nothing here
must survive a Redis restart; the SQL store stays the source of truth (SSE readers re-read it, workers see CANCELLING in
their heartbeat).

Owns: channel and key names, the message format on `job:{id}:live` (`publish_points`, `publish_state`,
`parse_live_message`) and the cancel flag (`set_cancel_flag`, `cancel_flag_set`). Must not import FastAPI
or torch. Callers pass a `redis.Redis` client (the API and the worker build theirs from REDIS_URL).

Message format (JSON; non-finite values are written as NaN/Infinity, which Python's json reads back):
    {"type": "metrics", "points": [{"seq", "ts", "phase", "epoch", "step", "key", "value"}, ...]}
    {"type": "state", "state": "<JobState>"}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from api_schemas import JobState, StoredMetricPoint

if TYPE_CHECKING:
    from uuid import UUID

#: How long a cancel flag lives, seconds (a stuck flag must not outlive any job attempt by much).
CANCEL_FLAG_TTL_S = 7 * 24 * 3600


def live_channel(job_id: str | UUID) -> str:
    """The pub/sub channel of one job's live metrics and state changes."""
    return f"job:{job_id}:live"


def cancel_key(job_id: str | UUID) -> str:
    """The key whose existence asks the worker to stop (mirrors jobs.cancel_requested_at)."""
    return f"job:{job_id}:cancel"


def _point_json(point: StoredMetricPoint) -> dict[str, Any]:
    return {**point.model_dump(exclude={"ts"}), "ts": point.ts.isoformat()}


def publish_points(client: redis.Redis, job_id: str | UUID, points: Sequence[StoredMetricPoint]) -> int:
    """Publish stored points (with their seq) on the job's channel; returns the number of subscribers."""
    if not points:
        return 0
    message = json.dumps({"type": "metrics", "points": [_point_json(p) for p in points]})
    return int(client.publish(live_channel(job_id), message))


def publish_state(client: redis.Redis, job_id: str | UUID, state: JobState) -> int:
    """Publish a state change on the job's channel; returns the number of subscribers."""
    message = json.dumps({"type": "state", "state": JobState(state).value})
    return int(client.publish(live_channel(job_id), message))


@dataclass(frozen=True)
class LiveMetrics:
    points: list[StoredMetricPoint]


@dataclass(frozen=True)
class LiveState:
    state: JobState


def parse_live_message(data: bytes | str) -> LiveMetrics | LiveState:
    """Decode one message of `job:{id}:live`.

    Raises:
        ValueError: not a message this module wrote (bad JSON, unknown type, bad point).
    """
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("live message is not a JSON object")
    if message.get("type") == "metrics":
        return LiveMetrics(points=[StoredMetricPoint.model_validate(p) for p in message.get("points", [])])
    if message.get("type") == "state":
        return LiveState(state=JobState(message["state"]))
    raise ValueError(f"unknown live message type {message.get('type')!r}")


def set_cancel_flag(client: redis.Redis, job_id: str | UUID, *, ttl_s: int = CANCEL_FLAG_TTL_S) -> None:
    """Ask the job's worker to stop at its next step (expires after `ttl_s` seconds)."""
    client.set(cancel_key(job_id), "1", ex=ttl_s)


def cancel_flag_set(client: redis.Redis, job_id: str | UUID) -> bool:
    """Whether a cancel was requested through Redis (the worker polls this between steps)."""
    return bool(client.exists(cancel_key(job_id)))
