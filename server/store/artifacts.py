"""Checkpoint records (ARCHITECTURE.md, "Checkpoints"): register, list and look up the checkpoint objects of a job.

Owns: `register_checkpoint` (fenced by the job's lease), `list_checkpoints`, `get_checkpoint` (with the
`final`/`latest` aliases) and `checkpoint_object`. The objects themselves, their keys and writes belong to
`server.store.files` and `server.store.objects`, re-exported here for the store's users. Must not import
FastAPI or torch.

A record never points at a missing or partial object: the worker uploads the checkpoint (temporary key, then
commit) and only then registers it, and `register_checkpoint` checks that the committed object has the
recorded size.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_schemas import CheckpointInfo
from api_schemas.checkpoints import CHECKPOINT_NAME_PATTERN
from server.store.db import utcnow
from server.store.errors import ArtifactRejected, CheckpointNotFound
from server.store.files import (
    ARTIFACT_MEDIA_TYPES,
    ARTIFACT_NAME_PATTERN,
    JOB_ARTIFACTS_SUBDIR,
    ArtifactStore,
    FileDigest,
    HashingWriter,
    LogChunk,
    ObjectInfo,
    artifact_key,
    artifact_object,
    file_digest,
    read_log,
)
from server.store.job_queries import latest_resume_checkpoint
from server.store.jobs import begin_write, fenced_update, get_job
from server.store.models import CheckpointRow
from server.store.principals import Principal

if TYPE_CHECKING:
    from uuid import UUID

__all__ = [
    "ARTIFACT_MEDIA_TYPES", "ARTIFACT_NAME_PATTERN", "FINAL", "JOB_ARTIFACTS_SUBDIR", "LATEST", "ArtifactStore",
    "FileDigest", "HashingWriter", "LogChunk", "ObjectInfo", "artifact_key", "artifact_object", "checkpoint_object",
    "file_digest", "get_checkpoint", "list_checkpoints", "read_log", "recorded_checkpoint_path", "register_checkpoint",
]

#: Checkpoint-name aliases: `final` (the run's final checkpoint) and `latest` (highest step).
FINAL, LATEST = "final", "latest"


# ---------------------------------------------------------------------------------------------- checkpoints


def register_checkpoint(
    session: Session, job_id: str | UUID, info: CheckpointInfo, *, lease_token: str, store: ArtifactStore,
    code_version: str | None = None, config_sha256: str | None = None,
) -> CheckpointRow:
    """Record a checkpoint object the worker uploaded (fenced by the lease; renews it); commits.

    `info.path` is the object's key relative to the job (`ArtifactStore.put_checkpoint` returns it); the object
    must exist and have `info.size` bytes. A checkpoint with the same name is replaced (e.g. rewritten after a
    resume); the caller removes the object the old record pointed at, or the reaper's orphan sweep does.
    `code_version` and `config_sha256` record the code and the config that produced the weights.

    Raises:
        ArtifactRejected (bad key, missing object or wrong size), JobNotFound, LeaseLost.
    """
    jid = str(job_id)
    rel = info.path
    found = store.stat(jid, rel)
    if found is None:
        raise ArtifactRejected(f"checkpoint object {rel} does not exist")
    if found.size != info.size:
        raise ArtifactRejected(f"checkpoint {info.name}: object has {found.size} bytes, record says {info.size}")
    begin_write(session)
    now = utcnow()
    fenced_update(session, jid, lease_token=lease_token, values={"heartbeat_at": now})
    row = session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == jid, CheckpointRow.name == info.name)
    ).first()
    if row is None:
        row = CheckpointRow(job_id=jid, name=info.name)
        session.add(row)
    row.phase, row.epoch, row.step, row.path = info.phase, info.epoch, info.step, rel
    row.size, row.sha256, row.is_final, row.created_at = info.size, info.sha256, info.is_final, now
    row.code_version, row.config_sha256 = code_version, config_sha256
    session.commit()
    return row


def recorded_checkpoint_path(session: Session, job_id: str | UUID, name: str) -> str | None:
    """The key (relative to the job) that the checkpoint record `name` points at now, or None (the worker's
    own job: no principal filter)."""
    path: str | None = session.scalars(
        select(CheckpointRow.path).where(CheckpointRow.job_id == str(job_id), CheckpointRow.name == name)
    ).first()
    return path


def list_checkpoints(session: Session, job_id: str | UUID, *, principal: Principal) -> list[CheckpointRow]:
    """The job's checkpoints by step, then creation time. Raises JobNotFound."""
    get_job(session, job_id, principal=principal)
    return list(session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == str(job_id))
        .order_by(CheckpointRow.step, CheckpointRow.created_at, CheckpointRow.id)
    ))


def get_checkpoint(session: Session, job_id: str | UUID, name: str, *, principal: Principal) -> CheckpointRow:
    """The checkpoint called `name`; `final` = the final checkpoint, `latest` = the highest step.

    Aliases win over a checkpoint literally named `latest`; for `final`, a checkpoint flagged final wins,
    else one named `final`.

    Raises:
        JobNotFound; CheckpointNotFound (no such checkpoint, or `name` is not a valid checkpoint name).
    """
    jid = str(job_id)
    get_job(session, jid, principal=principal)
    if not re.match(CHECKPOINT_NAME_PATTERN, name):
        raise CheckpointNotFound(jid, name)
    row: CheckpointRow | None
    if name == LATEST:
        row = latest_resume_checkpoint(session, jid)
    else:
        stmt = select(CheckpointRow).where(CheckpointRow.job_id == jid)
        if name == FINAL:
            stmt = stmt.where(CheckpointRow.is_final | (CheckpointRow.name == FINAL)).order_by(
                CheckpointRow.is_final.desc(), CheckpointRow.created_at.desc()
            )
        else:
            stmt = stmt.where(CheckpointRow.name == name)
        row = session.scalars(stmt.limit(1)).first()
    if row is None:
        raise CheckpointNotFound(jid, name)
    return row


def checkpoint_object(store: ArtifactStore, row: CheckpointRow) -> tuple[str, ObjectInfo]:
    """The checkpoint's object key and its size, checked (inside the job's prefix, exists).

    Raises:
        CheckpointNotFound: the object is gone or its recorded key is unsafe.
    """
    try:
        key = store.job_key(row.job_id, row.path)
        info = store.objects.stat(key)
    except ArtifactRejected as exc:
        raise CheckpointNotFound(row.job_id, row.name) from exc
    if info is None:
        raise CheckpointNotFound(row.job_id, row.name)
    return key, info
