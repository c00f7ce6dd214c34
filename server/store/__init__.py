"""The job store: SQL tables, the job state machine, metric history, artifacts, and Redis live signals.

Imports no FastAPI and no torch, so that the worker can use it (ARCHITECTURE.md, "The parts and their arrows"). See
docs/CONTRACTS.md.
"""

from server.store.artifacts import (
    ArtifactStore,
    FileDigest,
    get_checkpoint,
    list_checkpoints,
    read_log,
    register_checkpoint,
)
from server.store.db import create_schema, make_engine, make_session_factory, utcnow
from server.store.errors import (
    ArtifactRejected,
    CheckpointNotFound,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    OffsetOutOfRange,
    ReportNotFound,
    StoreError,
)
from server.store.job_queries import latest_resume_checkpoint, list_events, list_jobs, list_undispatched
from server.store.jobs import (
    ACTIVE_STATES,
    ALLOWED_FROM,
    ReapAction,
    ReapOutcome,
    claim_job,
    create_job,
    delete_job,
    find_idempotent_job,
    get_job,
    get_report,
    heartbeat,
    reap_expired,
    record_dispatch,
    request_cancel,
    set_report,
    transition,
)
from server.store.metrics import append_points, read_points
from server.store.models import CheckpointRow, IdempotencyKeyRow, JobEventRow, JobRow, MetricRow

__all__ = [
    "ACTIVE_STATES", "ALLOWED_FROM", "ArtifactRejected", "ArtifactStore", "CheckpointNotFound", "CheckpointRow",
    "FileDigest", "IdempotencyConflict", "IdempotencyKeyRow", "InvalidCursor", "InvalidTransition",
    "JobEventRow", "JobNotFound", "JobRow", "LeaseLost", "MetricRow", "OffsetOutOfRange", "ReapAction",
    "ReapOutcome", "ReportNotFound", "StoreError", "append_points", "claim_job",
    "create_job", "create_schema", "delete_job", "find_idempotent_job", "get_checkpoint", "get_job", "get_report",
    "heartbeat", "latest_resume_checkpoint", "list_checkpoints", "list_events", "list_jobs", "list_undispatched",
    "make_engine", "make_session_factory", "read_log", "read_points", "reap_expired", "record_dispatch",
    "register_checkpoint", "request_cancel", "set_report",
    "transition", "utcnow",
]
