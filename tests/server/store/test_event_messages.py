"""What each transition's event says (the job's audit trail), on SQLite and PostgreSQL: the reaper's four
outcomes, the user's cancel, and the refusal of a cancel on a finished job — checked word for word."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from api_schemas import JobState
from server.store import InvalidTransition, ReapOutcome, get_job, reap_expired, request_cancel, utcnow
from server.store.job_queries import list_events
from server.store.principals import ADMIN
from tests.factories import make_job

S = JobState
LEASE_TIMEOUT_S = 60.0


def _reap(session: Session, *, after_s: float = LEASE_TIMEOUT_S + 1, cancel_grace_s: float = 3600.0):  # type: ignore[no-untyped-def]
    return reap_expired(session, lease_timeout_s=LEASE_TIMEOUT_S, cancel_grace_s=cancel_grace_s,
                        now=utcnow() + timedelta(seconds=after_s))


def _last(session: Session, job_id: str) -> tuple[str | None, str, int, str | None]:
    e = list_events(session, job_id, principal=ADMIN)[-1]
    return e.from_state, e.to_state, e.attempt, e.message


def test_reaper_requeue_event_names_the_silence_and_the_next_attempt(session: Session) -> None:
    job = make_job(session, S.RUNNING, max_attempts=2)
    [action] = _reap(session)
    assert (action.outcome, action.attempt) == (ReapOutcome.REQUEUED, 1)
    assert _last(session, job.id) == ("RUNNING", "QUEUED", 2, "no heartbeat for 60 s; requeued for attempt 2 of 2")


def test_reaper_failure_event_and_failure_message_say_worker_lost(session: Session) -> None:
    job = make_job(session, S.RUNNING, max_attempts=1)
    [action] = _reap(session)
    assert action.outcome is ReapOutcome.FAILED_WORKER_LOST
    message = "worker lost: no heartbeat for 60 s (attempt 1 of 1)"
    assert _last(session, job.id) == ("RUNNING", "FAILED", 1, message)
    failed = get_job(session, job.id, principal=ADMIN)
    assert (failed.failure_reason, failed.failure_message) == ("WORKER_LOST", message)


def test_reaper_cancels_a_cancelling_job_whose_worker_died(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    [action] = _reap(session)
    assert action.outcome is ReapOutcome.CANCELLED_WORKER_LOST
    message = "worker lost while cancelling: no heartbeat for 60 s"
    assert _last(session, job.id) == ("CANCELLING", "CANCELLED", 1, message)


def test_reaper_escalates_a_cancel_past_its_grace_period(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    [action] = _reap(session, after_s=5.0, cancel_grace_s=1.0)  # the lease is alive, the grace is over
    assert action.outcome is ReapOutcome.CANCELLED_GRACE_EXPIRED
    assert _last(session, job.id) == (
        "CANCELLING", "CANCELLED", 1, "cancel grace period expired; the task should be revoked")


def test_reaper_leaves_a_live_lease_alone(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    assert _reap(session, after_s=LEASE_TIMEOUT_S - 5) == []
    assert get_job(session, job.id, principal=ADMIN).state == S.RUNNING.value


@pytest.mark.parametrize(("source", "target"), [(S.QUEUED, S.CANCELLED), (S.RUNNING, S.CANCELLING)])
def test_user_cancel_event_says_cancel_requested(session: Session, source: JobState, target: JobState) -> None:
    job = make_job(session, source)
    assert request_cancel(session, job.id, principal=ADMIN).state == target.value
    assert _last(session, job.id) == (source.value, target.value, 1, "cancel requested")


@pytest.mark.parametrize("finished", [S.SUCCEEDED, S.FAILED])
def test_cancel_of_a_finished_job_is_refused_naming_job_and_states(session: Session, finished: JobState) -> None:
    job = make_job(session, finished)
    with pytest.raises(InvalidTransition) as info:
        request_cancel(session, job.id, principal=ADMIN)
    assert (info.value.job_id, info.value.current, info.value.target) == (job.id, finished.value, "CANCELLED")
    assert str(info.value) == f"job {job.id} cannot go from {finished.value} to CANCELLED: the job already finished"
