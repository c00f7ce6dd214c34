"""The job state machine against its documented table (ARCHITECTURE.md, "The job state machine"), on SQLite and
PostgreSQL.

The table below is written from the documentation, not read from `server.store.jobs.ALLOWED_FROM`: a source state added
to or dropped from the implementation's table fails here. Beside it, the guards that the table alone does not
express: the requeue needs attempts left, and terminal states have no way out — also through direct calls.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from api_schemas import FailureReason, JobState
from server.store import InvalidTransition, get_job, request_cancel, transition
from server.store.job_queries import list_events
from server.store.principals import ADMIN
from tests.factories import make_job, new_lease

S = JobState

#: Every allowed (from, to) pair of the design; every other pair of states must be refused.
DESIGN_TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset({
    (S.QUEUED, S.RUNNING),  # a worker's claim
    (S.QUEUED, S.CANCELLED),  # cancel before any worker started it
    (S.RUNNING, S.SUCCEEDED),  # training finished, final checkpoint recorded
    (S.RUNNING, S.FAILED),  # exception, time limit, non-finite abort, or the reaper with no attempts left
    (S.RUNNING, S.CANCELLING),  # cooperative cancel: a running job is never CANCELLED in one step
    (S.RUNNING, S.QUEUED),  # the reaper's requeue after a lost lease (attempt < max_attempts)
    (S.CANCELLING, S.CANCELLED),  # the loop stopped, the reaper escalated, or the worker died while stopping
    (S.CANCELLING, S.SUCCEEDED),  # finished before it saw the flag: reported truthfully
    (S.CANCELLING, S.FAILED),  # failed before it saw the flag: reported truthfully
})
TERMINAL = (S.SUCCEEDED, S.FAILED, S.CANCELLED)
PAIRS = [(a, b) for a in S for b in S]


def _move(session: Session, job_id: str, to: JobState) -> None:
    """A direct transition call with the arguments that `to` requires."""
    if to is S.RUNNING:
        transition(session, job_id, to, principal=ADMIN, lease_token=new_lease())
    elif to is S.FAILED:
        transition(session, job_id, to, principal=ADMIN, failure_reason=FailureReason.INTERNAL,
                   message="failed in test")
    else:
        transition(session, job_id, to, principal=ADMIN)


def test_design_table_names_terminal_states_without_exits() -> None:
    # the table itself: nothing leaves a terminal state, and every non-terminal state can be left
    assert {a for a, _ in DESIGN_TRANSITIONS} == {S.QUEUED, S.RUNNING, S.CANCELLING}
    assert not {a for a, _ in DESIGN_TRANSITIONS} & set(TERMINAL)


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_transition_is_allowed_exactly_when_the_design_allows_it(
    session: Session, source: JobState, target: JobState
) -> None:
    job = make_job(session, source)
    events_before = [(e.from_state, e.to_state) for e in list_events(session, job.id, principal=ADMIN)]
    if (source, target) in DESIGN_TRANSITIONS:
        _move(session, job.id, target)
        assert get_job(session, job.id, principal=ADMIN).state == target.value
        events = [(e.from_state, e.to_state) for e in list_events(session, job.id, principal=ADMIN)]
        assert events == [*events_before, (source.value, target.value)]
    else:
        with pytest.raises(InvalidTransition):
            _move(session, job.id, target)
        assert get_job(session, job.id, principal=ADMIN).state == source.value
        assert [(e.from_state, e.to_state) for e in list_events(session, job.id, principal=ADMIN)] == events_before


def test_running_job_is_never_cancelled_directly(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(InvalidTransition, match="from RUNNING to CANCELLED"):
        transition(session, job.id, S.CANCELLED, principal=ADMIN, lease_token=job.lease_token)
    assert get_job(session, job.id, principal=ADMIN).state == S.RUNNING.value
    # the user's cancel goes through CANCELLING
    assert request_cancel(session, job.id, principal=ADMIN).state == S.CANCELLING.value


def test_requeue_past_max_attempts_is_refused(session: Session) -> None:
    job = make_job(session, S.RUNNING, max_attempts=1)
    with pytest.raises(InvalidTransition, match=r"attempts exhausted \(1 of 1\)"):
        transition(session, job.id, S.QUEUED, principal=ADMIN)
    after = get_job(session, job.id, principal=ADMIN)
    assert (after.state, after.attempt, after.max_attempts) == (S.RUNNING.value, 1, 1)
    assert [e.to_state for e in list_events(session, job.id, principal=ADMIN)] == ["QUEUED", "RUNNING"]


def test_requeue_counts_attempts_and_stops_at_the_last(session: Session) -> None:
    job = make_job(session, S.RUNNING, max_attempts=3)
    for attempt in (2, 3):
        requeued = transition(session, job.id, S.QUEUED, principal=ADMIN)
        assert (requeued.state, requeued.attempt) == (S.QUEUED.value, attempt)
        assert requeued.lease_token is None
        transition(session, job.id, S.RUNNING, principal=ADMIN, lease_token=new_lease())
    with pytest.raises(InvalidTransition, match=r"attempts exhausted \(3 of 3\)"):
        transition(session, job.id, S.QUEUED, principal=ADMIN)
    after = get_job(session, job.id, principal=ADMIN)
    assert (after.state, after.attempt) == (S.RUNNING.value, 3)
    assert [(e.to_state, e.attempt) for e in list_events(session, job.id, principal=ADMIN)] == [
        ("QUEUED", 1), ("RUNNING", 1), ("QUEUED", 2), ("RUNNING", 2), ("QUEUED", 3), ("RUNNING", 3)
    ]


@pytest.mark.parametrize("terminal", TERMINAL, ids=[s.value for s in TERMINAL])
def test_cancel_from_a_terminal_state_changes_nothing(session: Session, terminal: JobState) -> None:
    job = make_job(session, terminal)
    events_before = [(e.from_state, e.to_state) for e in list_events(session, job.id, principal=ADMIN)]
    with pytest.raises(InvalidTransition):
        transition(session, job.id, S.CANCELLED, principal=ADMIN)
    with pytest.raises(InvalidTransition):
        transition(session, job.id, S.CANCELLING, principal=ADMIN)
    if terminal is S.CANCELLED:
        assert request_cancel(session, job.id, principal=ADMIN).state == S.CANCELLED.value  # idempotent, no new event
    else:
        with pytest.raises(InvalidTransition, match="already finished"):
            request_cancel(session, job.id, principal=ADMIN)
    assert get_job(session, job.id, principal=ADMIN).state == terminal.value
    assert [(e.from_state, e.to_state) for e in list_events(session, job.id, principal=ADMIN)] == events_before
