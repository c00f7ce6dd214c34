"""StoreSink: the worker's MetricSink — SQL first (the truth), then Redis pub/sub
(ARCHITECTURE.md, "The life of a metric").

Owns: buffering metric points, flushing them through `server.store.metrics.append_points` (fenced by the
lease, one transaction per flush), publishing the stored points (with their seq) on `job:{id}:live`, and
registering checkpoints (with the code version and the config digest that produced them). Imports no torch
and no ris_model (it only has to satisfy the MetricSink protocol).

A checkpoint the trainer wrote to the worker's scratch directory is uploaded to the artifact store (temporary
key, then commit; retried CHECKPOINT_UPLOAD_TRIES times), and only then recorded, so that a record never
points at a missing or partial object. The object the record pointed at before (a rewritten `<phase>-last`) is
removed afterwards; if that fails, the reaper's orphan sweep removes it. An upload that keeps failing raises
ArtifactUploadFailed: the job fails INTERNAL with the store's error, or, if the worker dies meanwhile, the
next attempt resumes from the last checkpoint that was recorded.

When a flush happens: every `flush_interval_s` (checked on each `log_metrics` call and by the task's
heartbeat thread through `flush_if_due`), when `flush_max_points` are buffered, immediately for non-finite
event points (so `GET /v1/jobs/{id}` shows skipped steps while the job runs), before every checkpoint
registration and at close. A database that is unreachable (a PostgreSQL restart) is waited out: each write is
retried with bounded backoff for up to STORE_RETRY_DEADLINE_S (`worker.store_retry`), holding the trainer at its
next sink call meanwhile, and a flush whose connection broke during COMMIT is recognised by the job's seq
counter so that its points are not stored twice. Other SQL failures raise (they fail the job, or LeaseLost stops
it); a failed Redis publish is logged and dropped, because SSE clients replay from SQL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import CheckpointInfo, MetricPoint, StoredMetricPoint
from api_schemas.lineage import code_version
from api_schemas.metrics import NONFINITE_PREFIX
from server.store import live
from server.store.artifacts import ArtifactStore, recorded_checkpoint_path, register_checkpoint
from server.store.errors import ArtifactRejected, ArtifactUploadFailed
from server.store.jobs import get_job
from server.store.metrics import append_points
from server.store.principals import WORKER
from worker.store_retry import retry_store

log = logging.getLogger(__name__)

#: Attempts at uploading one checkpoint, and the pause before the second (doubled for each later one), seconds.
CHECKPOINT_UPLOAD_TRIES = 3
UPLOAD_RETRY_DELAY_S = 1.0


class StoreSink:
    """Writes a job's metric points and checkpoints to the store, then publishes them live.

    Thread-safe: the trainer calls `log_metrics`/`log_checkpoint` and the heartbeat thread calls
    `flush_if_due`. An error from a background flush is re-raised on the trainer's next call.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        *,
        lease_token: str,
        artifacts: ArtifactStore,
        redis: Redis | None,
        flush_interval_s: float = 1.0,
        flush_max_points: int = 200,
        store_retry_deadline_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        config_sha256: str | None = None,
    ) -> None:
        self._sessions = session_factory
        self._job_id = job_id
        self._lease_token = lease_token
        self._artifacts = artifacts
        self._redis = redis
        self._flush_interval_s = flush_interval_s
        self._flush_max_points = flush_max_points
        self._clock = clock
        self._config_sha256 = config_sha256
        self._lock = threading.Lock()
        self._buffer: list[MetricPoint] = []
        self._last_flush = clock()
        self._background_error: BaseException | None = None
        self._closed = False
        self._retry_deadline_s = store_retry_deadline_s
        #: the seq the next stored point gets, known after the first flush (to recognise a flush whose
        #: connection broke during COMMIT but which was stored)
        self._next_seq: int | None = None

    # -- the MetricSink protocol (called by the trainer) --

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        """Buffer `points`; flush now if a non-finite event is among them, or if the buffer is due."""
        self._raise_background_error()
        with self._lock:
            self._buffer.extend(points)
            urgent = any(p.key.startswith(NONFINITE_PREFIX) for p in points)
            if urgent or self._due():
                self._flush_locked()

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        """Flush buffered points, upload the checkpoint file to the artifact store, then register it (fenced by
        the lease) in one transaction, and remove the object the record pointed at before."""
        self._raise_background_error()
        stored = self._upload(info)  # outside the lock: the heartbeat thread's flushes must not wait for the store
        with self._lock:
            self._flush_locked()
            previous: list[str | None] = [None]

            def register() -> None:  # an upsert by name: repeating it after a broken COMMIT is harmless
                with self._sessions() as session:
                    previous[0] = recorded_checkpoint_path(session, self._job_id, info.name)
                    register_checkpoint(session, self._job_id, stored, lease_token=self._lease_token,
                                        store=self._artifacts, code_version=code_version(),
                                        config_sha256=self._config_sha256)
                    session.commit()

            retry_store(register, what=f"checkpoint {info.name} of job {self._job_id}",
                        deadline_s=self._retry_deadline_s)
        replaced = previous[0]
        if replaced is not None and replaced != stored.path:
            try:
                self._artifacts.objects.delete(self._artifacts.job_key(self._job_id, replaced))
            except Exception as exc:  # noqa: BLE001 - an orphan costs space only; the reaper's sweep removes it
                log.warning("could not remove the replaced checkpoint object %s: %s", replaced, exc)
        log.info("checkpoint %s stored as %s (phase=%s epoch=%d step=%d)", info.name, stored.path, info.phase,
                 info.epoch, info.step)

    def close(self) -> None:
        """Flush what is left. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            self._closed = True

    # -- called by the heartbeat thread --

    def flush_if_due(self) -> None:
        """Flush if the oldest buffered point waited `flush_interval_s`; keep an error for the trainer."""
        with self._lock:
            if self._closed or not self._due():
                return
            try:
                self._flush_locked()
            except Exception as exc:  # re-raised on the trainer's thread by its next sink call
                self._background_error = exc

    def flush(self) -> None:
        """Flush now (tests and the task's finish path)."""
        with self._lock:
            self._flush_locked()

    # -- internals --

    def _upload(self, info: CheckpointInfo) -> CheckpointInfo:
        """`ArtifactStore.put_checkpoint`, retried; raises ArtifactUploadFailed once every try failed."""
        delay_s = UPLOAD_RETRY_DELAY_S
        for attempt in range(1, CHECKPOINT_UPLOAD_TRIES + 1):
            try:
                return self._artifacts.put_checkpoint(self._job_id, info)
            except ArtifactRejected:
                raise
            except Exception as exc:
                if attempt == CHECKPOINT_UPLOAD_TRIES:
                    raise ArtifactUploadFailed(
                        f"checkpoint {info.name} could not be uploaded to the artifact store "
                        f"{self._artifacts.objects.url} ({attempt} tries): {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("upload of checkpoint %s failed (try %d of %d), retrying in %.0f s: %s", info.name,
                            attempt, CHECKPOINT_UPLOAD_TRIES, delay_s, exc)
                time.sleep(delay_s)
                delay_s *= 2
        raise AssertionError("unreachable")

    def _due(self) -> bool:
        if not self._buffer:
            return False
        return len(self._buffer) >= self._flush_max_points or self._clock() - self._last_flush >= self._flush_interval_s

    def _flush_locked(self) -> None:
        """Append the buffer in one transaction, then publish; the caller holds the lock."""
        self._raise_background_error()
        self._last_flush = self._clock()
        if not self._buffer:
            return
        points = list(self._buffer)
        unsure = False

        def note_failure(_exc: BaseException) -> None:
            nonlocal unsure
            unsure = True

        def append() -> list[StoredMetricPoint] | None:
            with self._sessions() as session:
                if unsure and self._next_seq is not None:
                    job = get_job(session, self._job_id, principal=WORKER)
                    if job.next_seq == self._next_seq + len(points):
                        return None  # the attempt whose connection broke was committed
                stored = append_points(session, self._job_id, points, lease_token=self._lease_token)
                session.commit()
                return stored

        def read_next_seq() -> int:
            with self._sessions() as session:
                return get_job(session, self._job_id, principal=WORKER).next_seq

        if self._next_seq is None:
            self._next_seq = retry_store(read_next_seq, what=f"reading job {self._job_id}",
                                         deadline_s=self._retry_deadline_s)
        stored = retry_store(append, what=f"metric flush of job {self._job_id}", deadline_s=self._retry_deadline_s,
                             on_retry=note_failure)
        self._buffer.clear()
        self._next_seq += len(points)
        if stored is not None:
            self._publish(stored)

    def _publish(self, stored: Sequence[StoredMetricPoint]) -> None:
        if self._redis is None or not stored:
            return
        try:
            live.publish_points(self._redis, self._job_id, stored)
        except RedisError as exc:
            log.warning("live publish of %d points failed (SQL has them): %s", len(stored), exc)

    def _raise_background_error(self) -> None:
        err: Any = self._background_error
        if err is not None:
            self._background_error = None
            raise err
