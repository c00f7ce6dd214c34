"""The reaper's rule at its edges, on SQLite and PostgreSQL: a lease or a cancel grace period that ends exactly at
the reaper's `now` is still alive; a CANCELLING job whose lease and grace are both over is reported as a lost worker;
a grace period that is over escalates the cancel even when the lease ends exactly now; and a heartbeat that lands
between the reaper's read and its UPDATE wins."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from api_schemas import JobState
from server.store import ReapOutcome, get_job, heartbeat, make_session_factory, reap_expired, utcnow
from server.store.job_queries import list_events
from server.store.jobs import fenced_update
from server.store.principals import ADMIN
from tests.factories import make_job

S = JobState
LEASE_S = 60.0
GRACE_S = 10.0
TICK = timedelta(microseconds=1)


def _times(session: Session, job_id: str) -> tuple[datetime, datetime | None]:
    job = get_job(session, job_id, principal=ADMIN)
    assert job.heartbeat_at is not None
    return job.heartbeat_at, job.cancel_requested_at


def _reap(session: Session, now: datetime, *, lease_s: float = LEASE_S, grace_s: float = GRACE_S) -> list[Any]:
    return [(a.outcome, a.attempt) for a in reap_expired(session, lease_timeout_s=lease_s, cancel_grace_s=grace_s,
                                                         now=now)]


def test_lease_that_ends_exactly_now_is_alive_and_one_tick_later_is_not(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    beat, _ = _times(session, job.id)
    assert _reap(session, beat + timedelta(seconds=LEASE_S)) == []
    assert get_job(session, job.id, principal=ADMIN).state == "RUNNING"
    assert _reap(session, beat + timedelta(seconds=LEASE_S) + TICK) == [(ReapOutcome.REQUEUED, 1)]


def test_cancel_grace_that_ends_exactly_now_is_alive_and_one_tick_later_is_not(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    _, requested = _times(session, job.id)
    assert requested is not None
    live_lease = 3600.0
    assert _reap(session, requested + timedelta(seconds=GRACE_S), lease_s=live_lease) == []
    assert get_job(session, job.id, principal=ADMIN).state == "CANCELLING"
    assert _reap(session, requested + timedelta(seconds=GRACE_S) + TICK, lease_s=live_lease) == [
        (ReapOutcome.CANCELLED_GRACE_EXPIRED, 1)]


def test_grace_over_escalates_while_the_lease_ends_exactly_now(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    beat, requested = _times(session, job.id)
    assert requested is not None and requested + timedelta(seconds=GRACE_S) < beat + timedelta(seconds=LEASE_S)
    assert _reap(session, beat + timedelta(seconds=LEASE_S)) == [(ReapOutcome.CANCELLED_GRACE_EXPIRED, 1)]
    assert get_job(session, job.id, principal=ADMIN).state == "CANCELLED"


def test_cancelling_job_with_lease_and_grace_both_over_is_a_lost_worker(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    beat, _ = _times(session, job.id)
    assert _reap(session, beat + timedelta(seconds=LEASE_S + 1)) == [(ReapOutcome.CANCELLED_WORKER_LOST, 1)]
    last = list_events(session, job.id, principal=ADMIN)[-1]
    assert (last.to_state, last.message) == ("CANCELLED", "worker lost while cancelling: no heartbeat for 60 s")


def test_heartbeat_between_the_reapers_read_and_its_update_wins(db_engine: Engine, session: Session) -> None:
    job = make_job(session, S.RUNNING)
    lease = job.lease_token
    assert lease is not None
    fenced_update(session, job.id, lease_token=lease, values={"heartbeat_at": utcnow() - timedelta(seconds=120)})
    session.commit()
    worker_session = make_session_factory(db_engine)()
    beats: list[JobState] = []
    fired: list[bool] = []

    def heartbeat_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # the reaper has read its candidates; its UPDATE is about to run: the worker's heartbeat commits first
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not fired:
            fired.append(True)
            beats.append(heartbeat(worker_session, job.id, lease_token=lease))

    event.listen(db_engine, "before_cursor_execute", heartbeat_first)
    try:
        actions = reap_expired(session, lease_timeout_s=LEASE_S, cancel_grace_s=3600.0)
    finally:
        event.remove(db_engine, "before_cursor_execute", heartbeat_first)
        worker_session.close()
    assert beats == [S.RUNNING]
    assert actions == []
    after = get_job(session, job.id, principal=ADMIN)
    assert (after.state, after.attempt, after.lease_token) == ("RUNNING", 1, lease)
