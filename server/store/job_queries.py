"""Read-only queries over the job table (ARCHITECTURE.md, "The job state machine"): the listing with its opaque page
tokens, a job's state events, counts for admission and /health, the dispatcher's sweep for jobs without a Celery
message, and the checkpoint a new attempt resumes from.

Owns nothing that writes: every state change stays in `server.store.jobs` (the one writer of `jobs.state`).
Must not import FastAPI, Celery or torch: the worker uses this module directly.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Text, cast, func, select, tuple_
from sqlalchemy.orm import Session

from api_schemas import JobKind, JobState
from server.store.db import utcnow
from server.store.errors import InvalidCursor
from server.store.jobs import get_job
from server.store.models import CheckpointRow, JobEventRow, JobRow
from server.store.principals import Principal, owned_by

if TYPE_CHECKING:
    from uuid import UUID


@dataclass(frozen=True)
class JobListing:
    """One page of jobs, newest first; `next_page_token` is None on the last page."""

    jobs: list[JobRow]
    next_page_token: str | None


def _encode_cursor(job: JobRow) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        return datetime.fromisoformat(created), str(job_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor("page_token is not a token this service issued") from exc


def list_jobs(
    session: Session,
    *,
    principal: Principal,
    state: JobState | None = None,
    kind: JobKind | None = None,
    parent_id: str | None = None,
    tag: str | None = None,
    limit: int = 50,
    page_token: str | None = None,
) -> JobListing:
    """The jobs `principal` may see, newest first (created_at, then id), optionally filtered, paged by an opaque
    token.

    `parent_id` keeps the trials of one sweep; `tag` keeps the jobs that carry that tag.

    Raises:
        InvalidCursor: `page_token` was not issued by `list_jobs`.
    """
    stmt = select(JobRow).where(owned_by(principal))
    if state is not None:
        stmt = stmt.where(JobRow.state == JobState(state).value)
    if kind is not None:
        stmt = stmt.where(JobRow.kind == JobKind(kind).value)
    if parent_id is not None:
        stmt = stmt.where(JobRow.parent_id == parent_id)
    if tag is not None:  # tags are stored as a JSON list of strings that contain no quote
        stmt = stmt.where(cast(JobRow.tags, Text).contains(json.dumps(tag), autoescape=True))
    if page_token:
        created, last_id = _decode_cursor(page_token)
        if created.tzinfo is None:
            raise InvalidCursor("page_token is not a token this service issued")
        stmt = stmt.where(tuple_(JobRow.created_at, JobRow.id) < tuple_(created, last_id))
    rows = list(session.scalars(stmt.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return JobListing(jobs=rows, next_page_token=_encode_cursor(rows[-1]) if more and rows else None)


def list_events(session: Session, job_id: str | UUID, *, principal: Principal) -> list[JobEventRow]:
    """The job's state transitions, oldest first. Raises JobNotFound."""
    get_job(session, job_id, principal=principal)
    return list(
        session.scalars(select(JobEventRow).where(JobEventRow.job_id == str(job_id)).order_by(JobEventRow.id))
    )


def waiting_reasons(session: Session, job_ids: Sequence[str]) -> dict[str, str]:
    """Why QUEUED jobs are not running yet: for each job whose latest event is QUEUED → QUEUED (written by
    `jobs.note_waiting`), that event's message. Jobs that simply wait their turn are absent. One query."""
    if not job_ids:
        return {}
    latest = (select(func.max(JobEventRow.id).label("id")).where(JobEventRow.job_id.in_(list(job_ids)))
              .group_by(JobEventRow.job_id).subquery())
    rows = session.execute(
        select(JobEventRow.job_id, JobEventRow.message).join(latest, JobEventRow.id == latest.c.id).where(
            JobEventRow.from_state == JobState.QUEUED.value, JobEventRow.to_state == JobState.QUEUED.value)
    )
    return {job_id: message for job_id, message in rows if message}


def count_queued(session: Session, *, principal: Principal) -> int:
    """How many QUEUED jobs this principal owns (an admin counts its own too, not everyone's)."""
    owner = JobRow.principal.is_(None) if principal.owner is None else JobRow.principal == principal.owner
    queued = JobRow.state == JobState.QUEUED.value
    return session.scalar(select(func.count()).select_from(JobRow).where(owner, queued)) or 0


def count_by_state(session: Session) -> dict[JobState, int]:
    """Number of jobs in each state (every state present, zero included)."""
    counts = dict.fromkeys(JobState, 0)
    for state, n in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)):
        counts[JobState(state)] = n
    return counts


def total_nonfinite_steps(session: Session) -> int:
    """Skipped non-finite steps summed over every stored job."""
    return int(session.scalar(select(func.coalesce(func.sum(JobRow.nonfinite_total), 0))) or 0)


def list_undispatched(session: Session, *, older_than_s: float, now: datetime | None = None) -> list[str]:
    """Ids of QUEUED jobs that never got a Celery message (broker was down) for longer than `older_than_s`."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
    return list(session.scalars(
        select(JobRow.id).where(
            JobRow.state == JobState.QUEUED.value, JobRow.celery_task_id.is_(None), JobRow.queued_at < cutoff
        ).order_by(JobRow.queued_at)
    ))


def list_children(session: Session, parent_id: str | UUID, *, principal: Principal) -> list[JobRow]:
    """The jobs a sweep created that `principal` may see, oldest first."""
    return list(session.scalars(
        select(JobRow).where(JobRow.parent_id == str(parent_id), owned_by(principal))
        .order_by(JobRow.created_at, JobRow.id)))


def latest_resume_checkpoint(session: Session, job_id: str | UUID) -> CheckpointRow | None:
    """The checkpoint a new attempt resumes from: the highest step, newest on ties; None if there is none."""
    return session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == str(job_id))
        .order_by(CheckpointRow.step.desc(), CheckpointRow.created_at.desc(), CheckpointRow.id.desc()).limit(1)
    ).first()
