"""The job monitor thread: lease heartbeat, cancel detection, and timed metric flushes
(ARCHITECTURE.md, "The job state machine", "The life of a job").

Owns: `JobMonitor` and `make_should_stop`. Every `poll_interval_s` the monitor reads the Redis cancel flag and
lets the sink flush points that waited too long; every `heartbeat_interval_s` it renews the lease with
`store.jobs.heartbeat`, which also reports a CANCELLING state (the durable cancel signal; Redis is only the
fast path). A LeaseLost sets `lease_lost`: the reaper gave the job away, so the trainer must stop and the task
must write nothing more. Imports no torch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import JobState
from server.store import jobs as store_jobs
from server.store import live
from server.store.errors import LeaseLost

log = logging.getLogger(__name__)

StopReason = Literal["cancel", "timeout"]


class JobMonitor(threading.Thread):
    """Background thread of one running job; stop it with `stop()`."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        *,
        lease_token: str,
        redis: Redis | None,
        heartbeat_interval_s: float,
        poll_interval_s: float = 0.5,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name=f"job-monitor-{job_id}", daemon=True)
        self._sessions = session_factory
        self.job_id = job_id
        self._lease_token = lease_token
        self._redis = redis
        self._heartbeat_interval_s = heartbeat_interval_s
        self._poll_interval_s = min(poll_interval_s, heartbeat_interval_s)
        self._on_poll = on_poll
        self._stopped = threading.Event()
        self._redis_down = False
        #: set once cancel was requested (Redis flag or job state CANCELLING)
        self.cancel_requested = threading.Event()
        #: set once the lease is gone; nothing more may be written for this attempt
        self.lease_lost = threading.Event()

    def run(self) -> None:
        next_beat = time.monotonic() + self._heartbeat_interval_s
        while not self._stopped.wait(self._poll_interval_s) and not self.lease_lost.is_set():
            self._poll_cancel_flag()
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + self._heartbeat_interval_s
            if self._on_poll is not None and not self.lease_lost.is_set():
                self._on_poll()

    def stop(self) -> None:
        """Stop the thread and wait for it (a beat in flight finishes first)."""
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=30.0)

    def _poll_cancel_flag(self) -> None:
        if self._redis is None or self.cancel_requested.is_set():
            return
        try:
            flag = live.cancel_flag_set(self._redis, self.job_id)
        except RedisError as exc:  # Redis is the fast path only; the heartbeat reads CANCELLING from SQL
            if not self._redis_down:
                log.warning("cancel flag check failed (warned once until Redis answers): %s", exc)
            self._redis_down = True
            return
        self._redis_down = False
        if flag:
            log.info("cancel flag seen on Redis")
            self.cancel_requested.set()

    def _beat(self) -> None:
        try:
            with self._sessions() as session:
                state = store_jobs.heartbeat(session, self.job_id, lease_token=self._lease_token)
                session.commit()
        except LeaseLost:
            log.error("lease lost: another attempt owns this job now; stopping without further writes")
            self.lease_lost.set()
            return
        except SQLAlchemyError as exc:  # transient; a lease that really lapses is the reaper's business
            log.warning("heartbeat failed: %s", exc)
            return
        if state == JobState.CANCELLING and not self.cancel_requested.is_set():
            log.info("job is CANCELLING")
            self.cancel_requested.set()


def make_should_stop(monitor: JobMonitor, *, deadline: float) -> Callable[[], StopReason | None]:
    """The `should_stop` callable handed to the trainer (polled between steps).

    Returns "cancel" once cancel was requested and "timeout" once `time.monotonic()` passed `deadline`, so the
    trainer checkpoints and returns before Celery's soft time limit. Raises LeaseLost once the lease is gone,
    so the trainer stops at once without writing a checkpoint that no longer belongs to it.
    """

    def should_stop() -> StopReason | None:
        if monitor.lease_lost.is_set():
            raise LeaseLost(monitor.job_id)
        if monitor.cancel_requested.is_set():
            return "cancel"
        if time.monotonic() >= deadline:
            return "timeout"
        return None

    return should_stop
