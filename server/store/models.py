"""SQLAlchemy 2 tables of the job store (ARCHITECTURE.md, "Where data lives"): jobs, job_events, metric_points,
checkpoints, idempotency_keys.

Owns: `JobRow`, `JobEventRow`, `MetricRow`, `CheckpointRow`, `IdempotencyKeyRow`. Must not import FastAPI or
torch. `jobs.state` is written only by `server.store.jobs`. Times are stored as naive UTC and read
back timezone-aware (`UTCDateTime`), identically on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC in the column."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UTCDateTime needs a timezone-aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    #: a JobState value; written only by server.store.jobs
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: the state before the last transition (set by the same UPDATE, so events know where they came from)
    previous_state: Mapped[str | None] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: who submitted it: a non-secret digest of the API key, or None when auth is off
    principal: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_attempts: Mapped[int] = mapped_column(Integer, default=2)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: when the job last entered QUEUED (creation or reaper requeue)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_reason: Mapped[str | None] = mapped_column(String(32))
    failure_message: Mapped[str | None] = mapped_column(Text)
    # progress, folded from metric points by server.store.metrics
    phase: Mapped[str | None] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    #: key -> latest value (None where the value was not finite: JSON has no NaN)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: an api_schemas.NonfiniteSummary as JSON
    nonfinite: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: NonfiniteSummary.total, as a column so that /metrics can SUM it
    nonfinite_total: Mapped[int] = mapped_column(Integer, default=0)
    #: the seq the next metric point gets (per job, from 1)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=1)
    #: the diagnostic verdict or evaluation tables (a dict of sections)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # lineage
    #: the sweep whose trial this job runs; None for a job a user submitted. No foreign key: a trial outlives the
    #: deletion of its sweep and keeps the sweep's id as its lineage
    parent_id: Mapped[str | None] = mapped_column(String(36), index=True)
    #: the user's labels, a JSON list of short strings (api_schemas.lineage.TAG_PATTERN); NULL (no tags) on jobs
    #: written before migration 0003
    tags: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    #: the package version (+g<commit>) that created the job, then the one of the worker that last ran it
    code_version: Mapped[str | None] = mapped_column(String(100))
    #: api_schemas.lineage.config_sha256 of `config`
    config_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_principal_state", "principal", "state"),
        Index("ix_jobs_principal_created", "principal", "created_at", "id"),  # one principal's listing
    )


class JobEventRow(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    #: who caused it: a principal id (`key-<16 hex>`, `anonymous`, `system:worker`, `system:reaper`); NULL on
    #: events older than schema revision 0002
    principal: Mapped[str | None] = mapped_column(String(64))


class MetricRow(Base):
    __tablename__ = "metric_points"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    phase: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(128))
    #: SQLite stores NaN as NULL; the store reads NULL back as NaN
    value: Mapped[float | None] = mapped_column(Float(precision=53))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_metric_points_job_key", "job_id", "key"),)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    phase: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    #: relative to the job's artifact directory (ARTIFACT_DIR/jobs/<id>/), e.g. checkpoints/final.pt
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the code (package version +g<commit>) and the config digest that produced the weights
    code_version: Mapped[str | None] = mapped_column(String(100))
    config_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_checkpoints_job_name"),)


class IdempotencyKeyRow(Base):
    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: "" when auth is off (NULLs never collide in a unique index)
    principal: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    body_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("principal", "key", name="uq_idempotency_principal_key"),)
