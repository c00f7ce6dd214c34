"""The job state machine and the job table (ARCHITECTURE.md, "The job state machine").

Owns: `ALLOWED_FROM`, `transition` (the only writer of `jobs.state`), job creation with idempotency keys,
claiming, heartbeats, cancel requests, the reaper's lease sweep, dispatch records, reports and row deletion.
Read-only listings and counts live in `server.store.job_queries`.
Must not import FastAPI, Celery or torch: the worker uses this module directly.

Tenants (`server.store.principals`): every function that reads or changes a job on a caller's behalf takes the
caller's `principal` and matches only jobs it may see, so another principal's job is `JobNotFound`, exactly like
a job that does not exist. Writes of a running attempt (claim, heartbeat, metric points, checkpoints, report,
terminal state) are authorized by the attempt's lease token instead and are the worker's (`WORKER`); the
reaper's are `REAPER`'s. Each event records the id of the principal that caused it.

Every write below opens its own transaction and commits before returning (see `server.store.db`).
A state change is one conditional `UPDATE … WHERE id=:id AND state IN (:allowed) [AND lease_token=:t]` plus a
`job_events` row in the same transaction; when no row matches, it raises. Terminal states have no way out.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import ColumnElement, Row, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_schemas import TERMINAL_STATES, FailureReason, JobKind, JobState
from api_schemas.lineage import code_version, config_sha256
from api_schemas.resources import split_stored_config
from server.store.db import utcnow
from server.store.errors import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    ReportNotFound,
)
from server.store.models import IdempotencyKeyRow, JobEventRow, JobRow
from server.store.principals import REAPER, WORKER, Principal, owned_by

if TYPE_CHECKING:
    from uuid import UUID

S = JobState
#: For each target state, the states it may be entered from (ARCHITECTURE.md, "The job state machine").
ALLOWED_FROM: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.RUNNING}),  # reaper requeue after a lost lease, while attempt < max_attempts
    S.RUNNING: frozenset({S.QUEUED}),  # a worker's claim
    S.CANCELLING: frozenset({S.RUNNING}),
    S.SUCCEEDED: frozenset({S.RUNNING, S.CANCELLING}),  # CANCELLING → SUCCEEDED: finished before it saw the flag
    S.FAILED: frozenset({S.RUNNING, S.CANCELLING}),
    # RUNNING → CANCELLED: only a sweep's trial that its pruner stopped (reason PRUNED; see transition)
    S.CANCELLED: frozenset({S.QUEUED, S.CANCELLING, S.RUNNING}),
}
#: States in which a worker holds a lease and writes metrics, checkpoints and heartbeats.
ACTIVE_STATES: frozenset[JobState] = frozenset({S.RUNNING, S.CANCELLING})

def _jid(job_id: str | UUID) -> str:
    return str(job_id)


def _values(states: frozenset[JobState] | set[JobState]) -> list[str]:
    return sorted(s.value for s in states)


def begin_write(session: Session) -> None:
    """End any transaction the session has open, so that the next statement starts a fresh write.

    Under SQLite WAL a read transaction cannot be upgraded to a write after another connection committed
    ("database is locked" without waiting), so every store write starts from here.
    """
    if session.in_transaction():
        session.commit()


# ---------------------------------------------------------------------------------------------- creation


def new_job_id() -> str:
    """A fresh job id (UUID4, as text)."""
    return str(uuid.uuid4())


def create_job(
    session: Session,
    *,
    kind: JobKind,
    name: str | None,
    config: dict[str, Any],
    max_attempts: int,
    principal: Principal,
    idempotency_key: str | None = None,
    body_sha256: str | None = None,
    parent_id: str | None = None,
    tags: Sequence[str] = (),
) -> JobRow:
    """Insert a QUEUED job (and its first event, and its idempotency key if given) and commit.

    The job records the digest of its config and the version of the code that created it.

    Args:
        config: the validated job config as JSON (`model_dump(mode="json")`).
        principal: the submitter; the job belongs to `principal.owner` (a non-secret id, never the API key;
            None for the anonymous principal when auth is off).
        parent_id: the sweep that creates this job as one of its trials.
        tags: the user's labels (validated by api_schemas.lineage.Tag).
        idempotency_key, body_sha256: given together; when another request committed the same key first,
            its job is returned instead (or IdempotencyConflict if its body differs).

    Raises:
        ValueError: `idempotency_key` without `body_sha256`, or `max_attempts` < 1.
        IdempotencyConflict: the key is taken by a request with another body.
    """
    if (idempotency_key is None) != (body_sha256 is None):
        raise ValueError("idempotency_key and body_sha256 go together")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    begin_write(session)
    now = utcnow()
    job = JobRow(
        id=new_job_id(), kind=JobKind(kind).value, name=name, state=S.QUEUED.value, config=config,
        principal=principal.owner, attempt=1, max_attempts=max_attempts, created_at=now, queued_at=now,
        latest_metrics={}, nonfinite={}, nonfinite_total=0, next_seq=1, epoch=0, step=0, progress_fraction=0.0,
        parent_id=parent_id, tags=list(tags), code_version=code_version(),
        config_sha256=config_sha256(split_stored_config(config)[0]),  # the config alone, as its checkpoints carry
    )
    session.add(job)
    session.flush()  # the job row first: events and keys reference it
    session.add(JobEventRow(job_id=job.id, from_state=None, to_state=S.QUEUED.value, at=now, attempt=1,
                            principal=principal.id))
    if idempotency_key is not None and body_sha256 is not None:
        session.add(IdempotencyKeyRow(
            principal=principal.owner or "", key=idempotency_key, body_sha256=body_sha256, job_id=job.id,
            created_at=now,
        ))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None or body_sha256 is None:
            raise
        existing = find_idempotent_job(session, principal=principal, key=idempotency_key, body_sha256=body_sha256)
        if existing is None:
            raise
        return existing
    return job


def find_idempotent_job(session: Session, *, principal: Principal, key: str, body_sha256: str) -> JobRow | None:
    """The job an earlier request of `principal` with this Idempotency-Key created, or None (keys are per owner).

    Raises:
        IdempotencyConflict: the key was used with a body whose sha256 differs.
    """
    row = session.scalars(
        select(IdempotencyKeyRow).where(
            IdempotencyKeyRow.principal == (principal.owner or ""), IdempotencyKeyRow.key == key
        )
    ).first()
    if row is None:
        return None
    if row.body_sha256 != body_sha256:
        raise IdempotencyConflict(key)
    return _visible_job(session, row.job_id, principal)


# ---------------------------------------------------------------------------------------------- reads


def _visible_job(session: Session, job_id: str, principal: Principal) -> JobRow | None:
    stmt = select(JobRow).where(JobRow.id == job_id, owned_by(principal))
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def get_job(session: Session, job_id: str | UUID, *, principal: Principal) -> JobRow:
    """The job row, freshly read, if `principal` may see it. Raises JobNotFound (also for another's job)."""
    job = _visible_job(session, _jid(job_id), principal)
    if job is None:
        raise JobNotFound(_jid(job_id))
    return job


# ---------------------------------------------------------------------------------------------- transitions


def _target_values(
    to: JobState, *, failure_reason: FailureReason | None, message: str | None, now: datetime
) -> dict[str, Any]:
    """Columns that change with the state, besides `state` itself.

    FAILED requires a failure_reason; CANCELLED takes one only to say why it stopped early (PRUNED); no other
    state takes one.
    """
    pruned = to is S.CANCELLED and failure_reason is FailureReason.PRUNED
    if (to is S.FAILED) != (failure_reason is not None) and not pruned:
        raise ValueError("failure_reason is required for FAILED and only for FAILED (or PRUNED for CANCELLED)")
    values: dict[str, Any] = {}
    if to in TERMINAL_STATES:
        values.update(finished_at=now, lease_token=None)  # a terminal job has no owner; fenced writes fail
    if (to is S.FAILED or pruned) and failure_reason is not None:
        values.update(failure_reason=FailureReason(failure_reason).value, failure_message=message or "")
    if to is S.CANCELLING:
        values.update(cancel_requested_at=now)
    if to is S.CANCELLED:
        values.update(cancel_requested_at=func.coalesce(JobRow.cancel_requested_at, now))
    if to is S.QUEUED:
        values.update(
            attempt=JobRow.attempt + 1, lease_token=None, worker=None, heartbeat_at=None, celery_task_id=None,
            queued_at=now,
        )
    return values


def _raise_for_failed_update(
    session: Session, job_id: str, to: JobState, *, lease_token: str | None, fenced: bool, principal: Principal
) -> NoReturn:
    """Explain why a conditional UPDATE matched no row: JobNotFound, LeaseLost or InvalidTransition."""
    session.rollback()
    job = _visible_job(session, job_id, principal)
    if job is None:
        raise JobNotFound(job_id)
    if fenced and job.lease_token != lease_token:
        raise LeaseLost(job_id)
    detail = None
    if to is S.QUEUED and job.state == S.RUNNING.value and job.attempt >= job.max_attempts:
        detail = f"attempts exhausted ({job.attempt} of {job.max_attempts})"
    raise InvalidTransition(job_id, job.state, to.value, detail)


def _transition(
    session: Session,
    job_id: str,
    to: JobState,
    *,
    allowed: frozenset[JobState],
    values: dict[str, Any],
    principal: Principal,
    where: Sequence[ColumnElement[bool]] = (),
    lease_token: str | None = None,
    fenced: bool = False,
    message: str | None = None,
) -> JobRow:
    """The one conditional UPDATE of `jobs.state` plus its `job_events` row, in one committed transaction."""
    begin_write(session)
    conditions = [JobRow.id == job_id, JobRow.state.in_(_values(allowed)), owned_by(principal), *where]
    if fenced:
        conditions.append(JobRow.lease_token == lease_token)
    if to is S.QUEUED:
        conditions.append(JobRow.attempt < JobRow.max_attempts)
    stmt = (
        update(JobRow)
        .where(*conditions)
        .values(state=to.value, previous_state=JobRow.state, **values)  # SET uses the pre-update state
        .returning(JobRow.previous_state, JobRow.attempt)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        _raise_for_failed_update(session, job_id, to, lease_token=lease_token, fenced=fenced, principal=principal)
    session.add(JobEventRow(
        job_id=job_id, from_state=row.previous_state, to_state=to.value, at=utcnow(), attempt=row.attempt,
        message=message, principal=principal.id,
    ))
    session.flush()
    job = get_job(session, job_id, principal=principal)
    session.commit()
    return job


def transition(
    session: Session,
    job_id: str | UUID,
    to: JobState,
    *,
    principal: Principal,
    lease_token: str | None = None,
    failure_reason: FailureReason | None = None,
    message: str | None = None,
    from_states: frozenset[JobState] | None = None,
) -> JobRow:
    """Move a job to `to` if its current state allows it (ALLOWED_FROM), record the event, commit.

    Args:
        principal: who causes it (recorded on the event); matches only jobs it may see.
        lease_token: a fence: the UPDATE matches only while the job holds this lease. For `to=RUNNING`
            (a claim; prefer `claim_job`) it is instead the new lease and is required.
        failure_reason: required for FAILED, refused otherwise; `message` becomes `failure_message`.
        message: free text kept on the event (and on the job for FAILED).
        from_states: narrow the allowed source states further (e.g. cancel only from QUEUED).

    Returns:
        The updated row.

    Raises:
        JobNotFound: no such job.
        LeaseLost: `lease_token` was given and the job no longer holds it.
        InvalidTransition: the current state does not allow `to` (terminal states allow nothing;
            QUEUED from RUNNING also needs attempt < max_attempts; CANCELLED from RUNNING needs reason PRUNED).
        ValueError: `failure_reason` missing for FAILED or given for another state.
    """
    to = JobState(to)
    jid = _jid(job_id)
    now = utcnow()
    allowed = ALLOWED_FROM[to] if from_states is None else ALLOWED_FROM[to] & from_states
    if to is S.CANCELLED and failure_reason is not FailureReason.PRUNED:
        allowed = allowed - {S.RUNNING}  # a running job is cancelled through CANCELLING; only a pruned one directly
    values = _target_values(to, failure_reason=failure_reason, message=message, now=now)
    if to is S.RUNNING:
        if not lease_token:
            raise ValueError("a claim (to=RUNNING) needs the new lease_token")
        values.update(lease_token=lease_token, heartbeat_at=now, started_at=func.coalesce(JobRow.started_at, now))
        return _transition(session, jid, to, allowed=allowed, values=values, message=message, principal=principal)
    return _transition(
        session, jid, to, allowed=allowed, values=values, lease_token=lease_token,
        fenced=lease_token is not None, message=message, principal=principal,
    )


def claim_job(session: Session, job_id: str | UUID, *, worker: str, lease_token: str) -> JobRow | None:
    """QUEUED → RUNNING with a new lease (sets worker, heartbeat_at, started_at on the first attempt).

    Returns:
        The claimed row, or None when the job is no longer QUEUED or no longer exists: the delivery was a
        duplicate (or the job was cancelled or deleted) and should be dropped.
    """
    jid = _jid(job_id)
    now = utcnow()
    values = _target_values(S.RUNNING, failure_reason=None, message=None, now=now)
    values.update(
        lease_token=lease_token, worker=worker, heartbeat_at=now, started_at=func.coalesce(JobRow.started_at, now)
    )
    try:
        return _transition(session, jid, S.RUNNING, allowed=ALLOWED_FROM[S.RUNNING], values=values, message=worker,
                           principal=WORKER)
    except (InvalidTransition, JobNotFound):
        return None


def fenced_update(
    session: Session, job_id: str | UUID, *, lease_token: str, values: dict[str, Any]
) -> Row[Any]:
    """UPDATE the job's non-state columns while it is RUNNING/CANCELLING under `lease_token` (no commit).

    Returns the row of (state, next_seq, latest_metrics, nonfinite) after the update.

    Raises:
        JobNotFound, LeaseLost (the job ended, was requeued, or another attempt holds it).
    """
    jid = _jid(job_id)
    stmt = (
        update(JobRow)
        .where(JobRow.id == jid, JobRow.lease_token == lease_token, JobRow.state.in_(_values(ACTIVE_STATES)))
        .values(**values)
        .returning(JobRow.state, JobRow.next_seq, JobRow.latest_metrics, JobRow.nonfinite)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        session.rollback()
        if session.get(JobRow, jid) is None:
            raise JobNotFound(jid)
        raise LeaseLost(jid)
    return row


def heartbeat(session: Session, job_id: str | UUID, *, lease_token: str) -> JobState:
    """Renew the lease (heartbeat_at = now) and return the job's state (CANCELLING means: stop).

    Raises:
        JobNotFound, LeaseLost.
    """
    begin_write(session)
    row = fenced_update(session, job_id, lease_token=lease_token, values={"heartbeat_at": utcnow()})
    session.commit()
    return JobState(row.state)


def request_cancel(session: Session, job_id: str | UUID, *, principal: Principal) -> JobRow:
    """A user's cancel: QUEUED → CANCELLED, RUNNING → CANCELLING; idempotent on CANCELLING/CANCELLED.

    The caller sets the Redis cancel flag when the result is CANCELLING (the worker also sees the state
    in its heartbeat).

    Raises:
        JobNotFound; InvalidTransition for SUCCEEDED or FAILED.
    """
    for to, source in ((S.CANCELLED, S.QUEUED), (S.CANCELLING, S.RUNNING)):
        try:
            return transition(session, job_id, to, from_states=frozenset({source}), message="cancel requested",
                              principal=principal)
        except InvalidTransition:
            continue
    job = get_job(session, job_id, principal=principal)
    if JobState(job.state) in (S.CANCELLING, S.CANCELLED):
        return job
    raise InvalidTransition(job.id, job.state, S.CANCELLED.value, "the job already finished")


def cancel_children(session: Session, parent_id: str | UUID, *, principal: Principal) -> list[JobRow]:
    """Request the cancel of every child job of a sweep that has not finished and that `principal` may control
    (commits each).

    Returns the children now CANCELLING (the caller sets their Redis cancel flags).
    """
    ids = list(session.scalars(select(JobRow.id).where(
        JobRow.parent_id == _jid(parent_id), JobRow.state.in_(_values({S.QUEUED, S.RUNNING})), owned_by(principal))))
    session.rollback()  # end the read before writing (SQLite WAL, see begin_write)
    cancelling = []
    for child_id in ids:
        try:
            child = request_cancel(session, child_id, principal=principal)
        except (InvalidTransition, JobNotFound):  # finished or deleted meanwhile
            continue
        if child.state == S.CANCELLING.value:
            cancelling.append(child)
    return cancelling


def record_code_version(session: Session, job_id: str | UUID, *, lease_token: str) -> None:
    """Record the version of the code that runs this attempt (fenced by the lease; commits)."""
    begin_write(session)
    fenced_update(session, job_id, lease_token=lease_token, values={"code_version": code_version()})
    session.commit()


# ---------------------------------------------------------------------------------------------- reaper


class ReapOutcome(StrEnum):
    #: RUNNING, lease expired, attempts left: back to QUEUED; the caller must enqueue it again
    REQUEUED = "REQUEUED"
    #: RUNNING, lease expired, no attempts left: FAILED(WORKER_LOST)
    FAILED_WORKER_LOST = "FAILED_WORKER_LOST"
    #: CANCELLING, lease expired: CANCELLED
    CANCELLED_WORKER_LOST = "CANCELLED_WORKER_LOST"
    #: CANCELLING longer than cancel_grace_s with a live lease: CANCELLED; the caller should revoke the task
    CANCELLED_GRACE_EXPIRED = "CANCELLED_GRACE_EXPIRED"


@dataclass(frozen=True)
class ReapAction:
    """What the reaper did to one job. `celery_task_id` is the lost attempt's task (for revoke)."""

    job_id: str
    outcome: ReapOutcome
    attempt: int
    celery_task_id: str | None


#: The reaper's view of one job: id, state, attempt, max_attempts, celery_task_id, heartbeat_at, cancel_requested_at.
_ReapCandidate = Row[str, str, int, int, str | None, datetime | None, datetime | None]


def _reap_one(
    session: Session,
    candidate: _ReapCandidate,
    *,
    expired: ColumnElement[bool],
    grace_expired: bool,
    lease_timeout_s: float,
) -> ReapAction | None:
    """Apply the reaper's rule to one candidate; None when a heartbeat or the worker got there first."""
    state, attempt, max_attempts = JobState(candidate.state), candidate.attempt, candidate.max_attempts
    lost = f"no heartbeat for {lease_timeout_s:g} s"
    where: list[ColumnElement[bool]] = [expired]  # re-checked in the UPDATE: a late heartbeat wins
    failure_reason: FailureReason | None = None
    if state is S.RUNNING and attempt < max_attempts:
        outcome, to = ReapOutcome.REQUEUED, S.QUEUED
        msg = f"{lost}; requeued for attempt {attempt + 1} of {max_attempts}"
    elif state is S.RUNNING:
        outcome, to, failure_reason = ReapOutcome.FAILED_WORKER_LOST, S.FAILED, FailureReason.WORKER_LOST
        msg = f"worker lost: {lost} (attempt {attempt} of {max_attempts})"
    elif grace_expired:
        outcome, to, where = ReapOutcome.CANCELLED_GRACE_EXPIRED, S.CANCELLED, []
        msg = "cancel grace period expired; the task should be revoked"
    else:
        outcome, to = ReapOutcome.CANCELLED_WORKER_LOST, S.CANCELLED
        msg = f"worker lost while cancelling: {lost}"
    values = _target_values(to, failure_reason=failure_reason, message=msg, now=utcnow())
    try:
        _transition(session, candidate.id, to, allowed=frozenset({state}), values=values, where=where, message=msg,
                    principal=REAPER)
    except (InvalidTransition, JobNotFound):
        return None
    return ReapAction(job_id=candidate.id, outcome=outcome, attempt=attempt, celery_task_id=candidate.celery_task_id)


def reap_expired(
    session: Session, *, lease_timeout_s: float, cancel_grace_s: float, now: datetime | None = None
) -> list[ReapAction]:
    """Requeue, fail or cancel RUNNING/CANCELLING jobs whose worker stopped heart-beating.

    Args:
        lease_timeout_s: a lease is expired when heartbeat_at is older than this, seconds.
        cancel_grace_s: a CANCELLING job whose cancel was requested longer ago than this, seconds, is
            CANCELLED even with a live lease (the caller should then revoke its Celery task).
        now: the reference time (tests); defaults to the current UTC time.

    Returns:
        One action per job changed. For REQUEUED the caller must enqueue the job id again.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_timeout_s)
    grace_cutoff = now - timedelta(seconds=cancel_grace_s)
    expired = or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < cutoff)
    begin_write(session)
    candidates = session.execute(
        select(
            JobRow.id, JobRow.state, JobRow.attempt, JobRow.max_attempts, JobRow.celery_task_id,
            JobRow.heartbeat_at, JobRow.cancel_requested_at,
        ).where(
            JobRow.state.in_(_values(ACTIVE_STATES)),
            or_(expired, and_(JobRow.state == S.CANCELLING.value, JobRow.cancel_requested_at < grace_cutoff)),
        )
    ).all()
    session.rollback()  # end the read before writing (SQLite WAL, see begin_write)
    actions = []
    for c in candidates:
        lease_expired = c.heartbeat_at is None or c.heartbeat_at < cutoff
        grace_expired = not lease_expired and c.cancel_requested_at is not None and c.cancel_requested_at < grace_cutoff
        action = _reap_one(session, c, expired=expired, grace_expired=grace_expired, lease_timeout_s=lease_timeout_s)
        if action is not None:
            actions.append(action)
    return actions


# ---------------------------------------------------------------------------------------------- dispatch


def record_dispatch(session: Session, job_id: str | UUID, *, celery_task_id: str) -> None:
    """Remember the Celery task id of the message that was just enqueued for this job (commits)."""
    begin_write(session)
    session.execute(
        update(JobRow).where(JobRow.id == _jid(job_id)).values(celery_task_id=celery_task_id)
        .execution_options(synchronize_session=False)
    )
    session.commit()


# ---------------------------------------------------------------------------------------------- reports


def _json_safe(value: Any) -> Any:
    """Report values as strict JSON: non-finite floats become the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"report values must be JSON types, got {type(value).__name__}")


def set_report(session: Session, job_id: str | UUID, report: dict[str, Any], *, lease_token: str) -> None:
    """Store the job's report (a dict of sections), fenced by the lease; commits.

    Non-finite floats are stored as "NaN"/"Infinity"/"-Infinity" (JSON has no NaN).

    Raises:
        JobNotFound, LeaseLost, TypeError (a value that is not a JSON type).
    """
    safe = _json_safe(report)
    begin_write(session)
    fenced_update(session, job_id, lease_token=lease_token, values={"report": safe, "heartbeat_at": utcnow()})
    session.commit()


def get_report(session: Session, job_id: str | UUID, *, principal: Principal) -> dict[str, Any]:
    """The job's report. A CANCELLED job without one gets a report that says it was cancelled, when, and how
    far it got. Raises JobNotFound, ReportNotFound (not written yet)."""
    job = get_job(session, job_id, principal=principal)
    if job.report is None and job.state == S.CANCELLED.value:
        when = job.cancel_requested_at.isoformat() if job.cancel_requested_at else None
        started = job.started_at is not None
        return {"state": S.CANCELLED.value, "cancelled": {
            "message": "the job was cancelled by request " + (
                f"while running, at phase {job.phase} epoch {job.epoch} step {job.step}; checkpoints written until "
                "then stay downloadable" if started else "before it started; it has no results"),
            "requested_at": when, "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }}
    if job.report is None:
        raise ReportNotFound(job.id)
    return job.report


# ---------------------------------------------------------------------------------------------- delete


def delete_job(session: Session, job_id: str | UUID, *, principal: Principal) -> None:
    """Delete a terminal job's rows (events, metrics, checkpoints, keys cascade); commits.

    Its files are the artifact store's: the caller removes them afterwards (`ArtifactStore.delete_job_files`).

    Raises:
        JobNotFound; InvalidTransition when the job is not terminal.
    """
    jid = _jid(job_id)
    begin_write(session)
    result = session.execute(
        delete(JobRow).where(JobRow.id == jid, JobRow.state.in_(_values(TERMINAL_STATES)), owned_by(principal))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.rollback()
        job = get_job(session, jid, principal=principal)
        raise InvalidTransition(jid, job.state, "DELETED", "only SUCCEEDED, FAILED or CANCELLED jobs can be deleted")
    session.commit()
    session.expunge_all()


# ---------------------------------------------------------------------------------------------- waiting


def note_waiting(session: Session, job_id: str | UUID, reason: str) -> bool:
    """Record on a QUEUED job why no worker runs it yet: a QUEUED → QUEUED event carrying `reason`, written only
    when it differs from the job's last event message (a job that keeps waiting for the same reason gets one
    event). Commits. Returns whether an event was written (False too when the job is no longer QUEUED)."""
    begin_write(session)
    jid = _jid(job_id)
    job = session.get(JobRow, jid, populate_existing=True)
    if job is None or job.state != S.QUEUED.value:
        session.rollback()
        return False
    last = session.execute(
        select(JobEventRow.message).where(JobEventRow.job_id == jid).order_by(JobEventRow.id.desc()).limit(1)
    ).scalar_one_or_none()
    if last == reason:
        session.rollback()
        return False
    session.add(JobEventRow(job_id=jid, from_state=S.QUEUED.value, to_state=S.QUEUED.value, at=utcnow(),
                            attempt=job.attempt, message=reason))
    session.commit()
    return True
