"""What a worker can run, and why a job waits (docs/ARCHITECTURE.md "Multi-GPU training").

Owns: WorkerCapacity, local_capacity, served_queues, unfit_reason, run_device, the Redis register of live
workers (`announce`, `live_capacities`, `CapacityAnnouncer`), `waiting_reason` and `queue_waiting_reason`.
Imports no torch: the prefork parent may import it (GPUs are counted as `ris-jobs worker` counts them, from
CUDA_VISIBLE_DEVICES or nvidia-smi).

A worker takes a job only if it can give it `resources.gpus` GPUs (or, for a CPU job, as many CPU processes as
it has cores). A worker that cannot leaves the job QUEUED, records why as a QUEUED → QUEUED job event, and
sends the job's message back to the end of the queue after REQUEUE_DELAY_S, so that another worker gets it.
Workers announce what they can run in Redis with a time to live, so the reason names what live workers have:
their GPUs, cores and the device queues (`gpu`, `cpu`) they consume. An idle worker announces itself too
(worker/app.py: at start and with Celery's event heartbeat), so that the reaper can tell a job that waits its
turn from one that no live worker serves (`queue_waiting_reason`: "waiting for a cuda worker: …").
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from celery.signals import heartbeat_sent, worker_ready
from redis import Redis
from redis.exceptions import RedisError

from api_schemas import DEVICE_QUEUES, Resources, device_queue
from server.dispatch import job_queue_name
from worker.gpus import visible_gpus

log = logging.getLogger(__name__)

#: Seconds a worker that cannot run a job waits before sending it back to the queue (no busy loop).
REQUEUE_DELAY_S = 2.0
#: Seconds an announcement lives in Redis; a worker refreshes it on every message and every job heartbeat.
ANNOUNCE_TTL_S = 120
_KEY_PREFIX = "ris:worker-capacity:"


@dataclass(frozen=True)
class WorkerCapacity:
    """GPUs this worker may use (0 on a CPU worker), its CPU cores, and the device queues it consumes."""

    gpus: int
    cpus: int
    queues: tuple[str, ...] = ()


def served_queues(celery_app: Any, prefix: str) -> tuple[str, ...]:
    """The device queues (`gpu`, `cpu`) this Celery worker consumes (its `-Q` selection of `<prefix>.<q>`)."""
    consumed = set(celery_app.amqp.queues.consume_from)
    return tuple(q for q in DEVICE_QUEUES if job_queue_name(prefix, q) in consumed)


def local_capacity(queues: tuple[str, ...] = ()) -> WorkerCapacity:
    """This worker's capacity: the GPUs in CUDA_VISIBLE_DEVICES (or all of nvidia-smi's), the usable cores."""
    return WorkerCapacity(gpus=len(visible_gpus()), cpus=len(os.sched_getaffinity(0)), queues=queues)


def run_device(resources: Resources, capacity: WorkerCapacity) -> Literal["cuda", "cpu"]:
    """Where a job runs on this worker: its `device`, or CUDA when the worker has GPUs."""
    if resources.device is not None:
        return resources.device
    return "cuda" if capacity.gpus > 0 else "cpu"


def unfit_reason(resources: Resources, capacity: WorkerCapacity) -> str | None:
    """None when this worker can run the job, else what it lacks."""
    n = resources.gpus
    if run_device(resources, capacity) == "cuda":
        if n > capacity.gpus:
            return f"it needs {n} GPU{'s' * (n > 1)}; this worker has {capacity.gpus}"
        return None
    if n > capacity.cpus:
        return f"it needs {n} CPU processes; this worker has {capacity.cpus} cores"
    return None


# -- the register of live workers --


def announce(redis: Redis, worker: str, capacity: WorkerCapacity) -> None:
    """Say in Redis, for ANNOUNCE_TTL_S, that `worker` is alive with `capacity` (Redis errors are logged)."""
    try:
        redis.set(_KEY_PREFIX + worker, json.dumps(asdict(capacity)), ex=ANNOUNCE_TTL_S)  # tuples → JSON lists
    except RedisError as exc:
        log.warning("could not announce this worker's capacity: %s", exc)


def live_capacities(redis: Redis) -> dict[str, WorkerCapacity]:
    """Every worker that announced itself within ANNOUNCE_TTL_S, by name ({} when Redis does not answer)."""
    try:
        keys = list(redis.scan_iter(match=_KEY_PREFIX + "*", count=500))
        values = redis.mget(keys) if keys else []
    except RedisError as exc:
        log.warning("could not read the live workers' capacities: %s", exc)
        return {}
    live: dict[str, WorkerCapacity] = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:  # expired between SCAN and MGET
            continue
        name = (key.decode() if isinstance(key, bytes) else str(key)).removeprefix(_KEY_PREFIX)
        raw = json.loads(value)
        live[name] = WorkerCapacity(gpus=int(raw["gpus"]), cpus=int(raw["cpus"]), queues=tuple(raw.get("queues", ())))
    return live


class CapacityAnnouncer:
    """Refreshes a worker's announcement at most every ANNOUNCE_TTL_S / 4 seconds (called from a poll loop)."""

    def __init__(self, redis: Redis, worker: str, capacity: WorkerCapacity) -> None:
        self._redis, self._worker, self._capacity = redis, worker, capacity
        self._next = 0.0

    def refresh_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            announce(self._redis, self._worker, self._capacity)
            self._next = now + ANNOUNCE_TTL_S / 4


def queue_waiting_reason(resources: Resources, live: dict[str, WorkerCapacity]) -> str | None:
    """Why a QUEUED job is not picked up at all: no live worker consumes its device queue (None when one does)."""
    queue = device_queue(resources)
    if any(queue in c.queues for c in live.values()):
        return None
    wanted = "cuda" if queue == "gpu" else "cpu"
    served = sorted({q for c in live.values() for q in c.queues})
    return (f"waiting for a {wanted} worker: no live worker serves the {queue} queue "
            f"(live workers serve: {', '.join(served) if served else 'none'}; start one with "
            f"`ris-jobs worker --queues {queue}`)")


def waiting_reason(resources: Resources, here: str, capacity: WorkerCapacity,
                   live: dict[str, WorkerCapacity]) -> str | None:
    """Why this worker leaves the job QUEUED (None when it can run it), naming what the live workers have."""
    lack = unfit_reason(resources, capacity)
    if lack is None:
        return None
    live = {**live, here: capacity}
    able = sorted(name for name, c in live.items() if unfit_reason(resources, c) is None)
    if able:
        return f"waiting for a worker that can run it ({', '.join(able[:3])}): on {here}, {lack}"
    most = max(live.items(), key=lambda item: (item[1].gpus, item[1].cpus))
    return (f"waiting: no live worker can run it; {lack} (the largest live worker, {most[0]}, has "
            f"{most[1].gpus} GPUs and {most[1].cpus} cores)")


# -- idle workers announce themselves too (Celery signals, in the worker's main process) --

_idle_announcer: CapacityAnnouncer | None = None


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery ships no types
def _announce_at_start(sender: Any = None, **_: Any) -> None:
    """At worker start: announce this worker and what it serves, before it has received any message."""
    global _idle_announcer
    from server.settings import get_settings

    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    capacity = local_capacity(served_queues(sender.app, settings.job_queue))
    _idle_announcer = CapacityAnnouncer(redis, sender.hostname, capacity)
    _idle_announcer.refresh_if_due()


@heartbeat_sent.connect  # type: ignore[untyped-decorator]
def _announce_while_idle(**_: Any) -> None:
    """Celery's event heartbeat (every 2 s): keep the announcement alive while the worker waits for messages."""
    if _idle_announcer is not None:
        _idle_announcer.refresh_if_due()
