"""What a worker can run, and why a job waits (DESIGN §3.4; docs/ARCHITECTURE.md "Multi-GPU training").

Owns: WorkerCapacity, local_capacity, unfit_reason, run_device, the Redis register of live workers
(`announce`, `live_capacities`, `CapacityAnnouncer`) and `waiting_reason`. Imports no torch: the prefork parent
may import it (GPUs are counted as `ris-jobs worker` counts them, from CUDA_VISIBLE_DEVICES or nvidia-smi).

A worker takes a job only if it can give it `resources.gpus` GPUs (or, for a CPU job, as many CPU processes as
it has cores). A worker that cannot leaves the job QUEUED, records why as a QUEUED → QUEUED job event, and
sends the job's message back to the end of the queue after REQUEUE_DELAY_S, so that another worker gets it.
Workers announce what they can run in Redis with a time to live, so the reason names what live workers have.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Literal

from redis import Redis
from redis.exceptions import RedisError

from api_schemas import Resources
from worker.cli import visible_gpus

log = logging.getLogger(__name__)

#: Seconds a worker that cannot run a job waits before sending it back to the queue (no busy loop).
REQUEUE_DELAY_S = 2.0
#: Seconds an announcement lives in Redis; a worker refreshes it on every message and every job heartbeat.
ANNOUNCE_TTL_S = 120
_KEY_PREFIX = "ris:worker-capacity:"


@dataclass(frozen=True)
class WorkerCapacity:
    """GPUs this worker may use (0 on a CPU worker) and its CPU cores."""

    gpus: int
    cpus: int


def local_capacity() -> WorkerCapacity:
    """This worker's capacity: the GPUs in CUDA_VISIBLE_DEVICES (or all of nvidia-smi's), the usable cores."""
    return WorkerCapacity(gpus=len(visible_gpus()), cpus=len(os.sched_getaffinity(0)))


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
        redis.set(_KEY_PREFIX + worker, json.dumps(asdict(capacity)), ex=ANNOUNCE_TTL_S)
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
        live[name] = WorkerCapacity(**json.loads(value))
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
