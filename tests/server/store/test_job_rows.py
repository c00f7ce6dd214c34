"""What the job store writes, column by column, and what its errors carry, on SQLite and PostgreSQL: a new job's
row and first event, the columns a claim, a requeue and a cancel set or clear, the worker's fenced writes, the
waiting notes, a sweep's cancel, the reports, and the tenant filter of each read and write.
Rows are read back through a second session, so that what is checked is what was committed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, update
from sqlalchemy.orm import Session

from api_schemas import FailureReason, JobKind, JobState
from api_schemas.lineage import code_version, config_sha256
from api_schemas.resources import split_stored_config
from server.store import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    ReportNotFound,
    claim_job,
    create_job,
    delete_job,
    get_job,
    get_report,
    heartbeat,
    make_session_factory,
    reap_expired,
    request_cancel,
    set_report,
    transition,
    utcnow,
)
from server.store.job_queries import list_events
from server.store.jobs import (
    cancel_children,
    fenced_update,
    find_idempotent_job,
    note_waiting,
    record_code_version,
)
from server.store.models import JobRow
from server.store.principals import ADMIN, REAPER, WORKER, Principal
from tests.factories import make_job, new_lease, tiny_config

S = JobState
ALICE = Principal(id="key-a11ce00000000000", owner="key-a11ce00000000000")
BOB = Principal(id="key-b0b0000000000000", owner="key-b0b0000000000000")


@pytest.fixture
def other(db_engine: Engine) -> Iterator[Session]:
    """A second session on the same database: it sees only what the store committed."""
    with make_session_factory(db_engine)() as s:
        yield s


def _fresh(session: Session, job_id: str) -> JobRow:
    return get_job(session, job_id, principal=ADMIN)


def _events(session: Session, job_id: str) -> list[tuple[str | None, str, int, str | None, str | None]]:
    return [(e.from_state, e.to_state, e.attempt, e.message, e.principal)
            for e in list_events(session, job_id, principal=ADMIN)]


def _running(session: Session, **kwargs: object) -> tuple[JobRow, str]:
    job = make_job(session, S.RUNNING, **kwargs)  # type: ignore[arg-type]
    assert job.lease_token is not None
    return job, job.lease_token


# ---------------------------------------------------------------------------------------------- creation


def test_new_job_row_and_first_event(session: Session, other: Session) -> None:
    config = tiny_config()
    job = create_job(session, kind=JobKind.TRAINING, name="first run", config=config, max_attempts=3, principal=ALICE,
                     tags=["a", "b"])
    row = _fresh(other, job.id)
    assert (row.kind, row.name, row.state, row.config, row.principal) == (
        "training", "first run", "QUEUED", config, ALICE.owner)
    assert (row.attempt, row.max_attempts, row.tags, row.parent_id) == (1, 3, ["a", "b"], None)
    assert (row.latest_metrics, row.nonfinite, row.nonfinite_total, row.next_seq) == ({}, {}, 0, 1)
    assert (row.phase, row.epoch, row.step, row.progress_fraction) == (None, 0, 0, 0.0)
    assert row.created_at == row.queued_at and row.started_at is None and row.cancel_requested_at is None
    assert (row.code_version, row.config_sha256) == (code_version(), config_sha256(split_stored_config(config)[0]))
    assert _events(other, job.id) == [(None, "QUEUED", 1, None, ALICE.id)]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
    ({"max_attempts": 1, "idempotency_key": "k"}, "idempotency_key and body_sha256 go together"),
    ({"max_attempts": 1, "body_sha256": "a" * 64}, "idempotency_key and body_sha256 go together"),
])
def test_create_job_refuses_bad_arguments_saying_which(session: Session, kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError) as info:
        create_job(session, kind=JobKind.DIAGNOSTIC, name=None, config=tiny_config(), principal=ALICE,
                   **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == error


def test_idempotency_keys_are_per_owner_and_per_key(session: Session) -> None:
    args = {"kind": JobKind.DIAGNOSTIC, "name": None, "config": tiny_config(), "max_attempts": 1}
    first = create_job(session, **args, principal=ALICE, idempotency_key="k1", body_sha256="a" * 64)  # type: ignore[arg-type]
    second = create_job(session, **args, principal=ALICE, idempotency_key="k2", body_sha256="b" * 64)  # type: ignore[arg-type]
    found = find_idempotent_job(session, principal=ALICE, key="k2", body_sha256="b" * 64)
    assert found is not None and found.id == second.id != first.id
    # another owner's use of the same key, with another body, is no conflict: keys are per owner
    assert find_idempotent_job(session, principal=BOB, key="k1", body_sha256="c" * 64) is None
    with pytest.raises(IdempotencyConflict) as info:
        find_idempotent_job(session, principal=ALICE, key="k1", body_sha256="c" * 64)
    assert info.value.key == "k1"


# ---------------------------------------------------------------------------------------------- claims, requeues


def test_claim_event_names_the_worker_and_the_worker_principal(session: Session, other: Session) -> None:
    job = make_job(session)
    claim_job(session, job.id, worker="gpu1@host", lease_token=new_lease())
    assert _events(other, job.id)[-1] == ("QUEUED", "RUNNING", 1, "gpu1@host", WORKER.id)
    assert _fresh(other, job.id).cancel_requested_at is None


def test_requeue_clears_the_attempt_and_a_second_claim_keeps_the_first_start(session: Session, other: Session) -> None:
    job, lease = _running(session, max_attempts=2)
    first = _fresh(other, job.id)
    started_at, queued_at = first.started_at, first.queued_at  # the row object is refreshed by later reads
    assert started_at is not None and queued_at is not None
    [action] = reap_expired(session, lease_timeout_s=60, cancel_grace_s=3600, now=utcnow() + timedelta(seconds=61))
    assert action.attempt == 1
    requeued = _fresh(other, job.id)
    assert (requeued.state, requeued.attempt, requeued.lease_token, requeued.worker, requeued.heartbeat_at) == (
        "QUEUED", 2, None, None, None)
    assert requeued.celery_task_id is None and requeued.queued_at > queued_at
    assert _events(other, job.id)[-1][4] == REAPER.id
    claim_job(session, job.id, worker="w2", lease_token=new_lease())
    again = _fresh(other, job.id)
    assert (again.attempt, again.worker, again.started_at) == (2, "w2", started_at)


# ---------------------------------------------------------------------------------------------- transitions


def test_a_claim_through_transition_needs_and_sets_the_new_lease_and_keeps_the_first_start(
    session: Session, other: Session
) -> None:
    job = make_job(session)
    with pytest.raises(ValueError) as info:
        transition(session, job.id, S.RUNNING, principal=WORKER)
    assert str(info.value) == "a claim (to=RUNNING) needs the new lease_token"
    lease = new_lease()
    transition(session, job.id, S.RUNNING, principal=WORKER, lease_token=lease, message="gpu0@host")
    row = _fresh(other, job.id)
    started_at = row.started_at
    assert (row.state, row.lease_token) == ("RUNNING", lease)
    assert started_at is not None and row.heartbeat_at is not None
    assert _events(other, job.id)[-1] == ("QUEUED", "RUNNING", 1, "gpu0@host", WORKER.id)
    reap_expired(session, lease_timeout_s=60, cancel_grace_s=3600, now=utcnow() + timedelta(seconds=61))
    second = new_lease()
    transition(session, job.id, S.RUNNING, principal=WORKER, lease_token=second)
    again = _fresh(other, job.id)
    assert (again.attempt, again.lease_token, again.started_at) == (2, second, started_at)
    assert again.heartbeat_at is not None


def test_failure_without_a_message_stores_an_empty_one(session: Session, other: Session) -> None:
    job, lease = _running(session)
    transition(session, job.id, S.FAILED, principal=WORKER, lease_token=lease, failure_reason=FailureReason.OOM)
    row = _fresh(other, job.id)
    assert (row.failure_reason, row.failure_message) == ("OOM", "")
    assert _events(other, job.id)[-1] == ("RUNNING", "FAILED", 1, None, WORKER.id)


@pytest.mark.parametrize("to", [S.SUCCEEDED, S.CANCELLING, S.QUEUED])
def test_a_failure_reason_is_refused_outside_failed_and_pruned(session: Session, to: JobState) -> None:
    job, lease = _running(session)
    with pytest.raises(ValueError) as info:
        transition(session, job.id, to, principal=ADMIN, failure_reason=FailureReason.PRUNED)
    assert str(info.value) == "failure_reason is required for FAILED and only for FAILED (or PRUNED for CANCELLED)"
    assert _fresh(session, job.id).state == "RUNNING"


def test_cancel_keeps_the_time_it_was_requested(session: Session, other: Session) -> None:
    job, lease = _running(session)
    requested = request_cancel(session, job.id, principal=ADMIN).cancel_requested_at
    assert requested is not None
    transition(session, job.id, S.CANCELLED, principal=WORKER, lease_token=lease)
    row = _fresh(other, job.id)
    assert (row.state, row.cancel_requested_at, row.lease_token) == ("CANCELLED", requested, None)
    assert row.finished_at is not None and row.finished_at >= requested


@pytest.mark.parametrize(("source", "to", "detail"), [
    (S.RUNNING, S.RUNNING, None),  # attempts used up, but a claim is refused for being RUNNING, not for that
    (S.SUCCEEDED, S.QUEUED, None),  # a requeue refused for the state alone
    (S.RUNNING, S.QUEUED, "attempts exhausted (1 of 1)"),
])
def test_refused_transition_names_job_states_and_only_a_true_reason(
    session: Session, source: JobState, to: JobState, detail: str | None
) -> None:
    job = make_job(session, source, max_attempts=1)
    with pytest.raises(InvalidTransition) as info:
        transition(session, job.id, to, principal=ADMIN, lease_token=new_lease() if to is S.RUNNING else None)
    assert (info.value.job_id, info.value.current, info.value.target) == (job.id, source.value, to.value)
    text = f"job {job.id} cannot go from {source.value} to {to.value}"
    assert str(info.value) == (f"{text}: {detail}" if detail else text)


def test_missing_job_and_lost_lease_errors_name_the_job(session: Session) -> None:
    with pytest.raises(JobNotFound) as missing:
        transition(session, "no-such-job", S.CANCELLED, principal=ADMIN)
    assert missing.value.job_id == "no-such-job"
    with pytest.raises(JobNotFound) as missing_get:
        get_job(session, "no-such-job", principal=ADMIN)
    assert missing_get.value.job_id == "no-such-job"
    job, lease = _running(session)
    with pytest.raises(LeaseLost) as lost:
        transition(session, job.id, S.SUCCEEDED, principal=WORKER, lease_token="stale")
    assert lost.value.job_id == job.id


# ---------------------------------------------------------------------------------------------- fenced writes


def test_fenced_update_returns_the_row_the_metric_sink_needs(session: Session) -> None:
    job, lease = _running(session)
    row = fenced_update(session, job.id, lease_token=lease,
                        values={"next_seq": 5, "latest_metrics": {"loss": 1.5}, "nonfinite": {"total": 2}})
    session.commit()
    assert (row.state, row.next_seq, row.latest_metrics, row.nonfinite) == ("RUNNING", 5, {"loss": 1.5}, {"total": 2})


def test_a_lease_fences_only_its_own_job(session: Session, other: Session) -> None:
    mine, my_lease = _running(session)
    theirs, their_lease = _running(session)
    with pytest.raises(LeaseLost) as lost:
        heartbeat(session, mine.id, lease_token=their_lease)
    assert lost.value.job_id == mine.id
    with pytest.raises(JobNotFound) as missing:
        heartbeat(session, "no-such-job", lease_token=their_lease)
    assert missing.value.job_id == "no-such-job"
    assert _fresh(other, theirs.id).heartbeat_at == theirs.heartbeat_at


def test_record_code_version_writes_this_code_s_version_under_the_lease(session: Session, other: Session) -> None:
    job, lease = _running(session)
    session.execute(update(JobRow).where(JobRow.id == job.id).values(code_version="0.0.1+old"))
    session.commit()
    record_code_version(session, job.id, lease_token=lease)
    assert _fresh(other, job.id).code_version == code_version()
    with pytest.raises(LeaseLost):
        record_code_version(session, job.id, lease_token="stale")


# ---------------------------------------------------------------------------------------------- waiting notes


def test_note_waiting_writes_one_event_per_change_of_reason(session: Session, other: Session) -> None:
    job = make_job(session)
    neighbour = make_job(session)
    assert note_waiting(session, neighbour.id, "no GPU worker") is True  # another job's note is not this one's
    assert note_waiting(session, job.id, "no GPU worker") is True
    assert note_waiting(session, job.id, "no GPU worker") is False
    assert note_waiting(session, job.id, "queue full") is True
    assert note_waiting(session, job.id, "no GPU worker") is True
    assert _events(other, job.id) == [
        (None, "QUEUED", 1, None, "anonymous"),
        ("QUEUED", "QUEUED", 1, "no GPU worker", None),
        ("QUEUED", "QUEUED", 1, "queue full", None),
        ("QUEUED", "QUEUED", 1, "no GPU worker", None),
    ]
    assert all(e.at is not None for e in list_events(other, job.id, principal=ADMIN))


def test_note_waiting_skips_a_job_that_left_queued_meanwhile(session: Session, other: Session) -> None:
    job = make_job(session)
    assert note_waiting(session, job.id, "no GPU worker") is True  # `session` has read the QUEUED row
    claim_job(other, job.id, worker="w", lease_token=new_lease())
    assert note_waiting(session, job.id, "still waiting") is False
    assert note_waiting(session, "no-such-job", "x") is False
    assert [e[3] for e in _events(other, job.id)] == [None, "no GPU worker", "w"]


# ---------------------------------------------------------------------------------------------- sweeps


def test_cancel_children_cancels_the_sweep_s_unfinished_trials_of_the_caller(session: Session, other: Session) -> None:
    sweep = create_job(session, kind=JobKind.SWEEP, name="s", config={}, max_attempts=1, principal=ALICE)
    queued = create_job(session, kind=JobKind.TRAINING, name="q", config=tiny_config(), max_attempts=1,
                        parent_id=sweep.id, principal=ALICE)
    running = create_job(session, kind=JobKind.TRAINING, name="r", config=tiny_config(), max_attempts=1,
                         parent_id=sweep.id, principal=ALICE)
    claim_job(session, running.id, worker="w", lease_token=new_lease())
    done = create_job(session, kind=JobKind.TRAINING, name="d", config=tiny_config(), max_attempts=1,
                      parent_id=sweep.id, principal=ALICE)
    done_lease = new_lease()
    claim_job(session, done.id, worker="w", lease_token=done_lease)
    transition(session, done.id, S.SUCCEEDED, principal=WORKER, lease_token=done_lease)
    already = create_job(session, kind=JobKind.TRAINING, name="c", config=tiny_config(), max_attempts=1,
                         parent_id=sweep.id, principal=ALICE)
    claim_job(session, already.id, worker="w", lease_token=new_lease())
    request_cancel(session, already.id, principal=ALICE)  # its flag is set already
    stranger = make_job(session, principal=ALICE)  # no parent
    assert cancel_children(session, sweep.id, principal=BOB) == []  # not Bob's trials
    assert _fresh(other, queued.id).state == "QUEUED"

    cancelling = cancel_children(session, sweep.id, principal=ALICE)
    assert [j.id for j in cancelling] == [running.id]
    states = {j: _fresh(other, j).state for j in (sweep.id, queued.id, running.id, done.id, already.id, stranger.id)}
    assert states == {sweep.id: "QUEUED", queued.id: "CANCELLED", running.id: "CANCELLING",
                      done.id: "SUCCEEDED", already.id: "CANCELLING", stranger.id: "QUEUED"}
    assert _events(other, running.id)[-1] == ("RUNNING", "CANCELLING", 1, "cancel requested", ALICE.id)


def test_a_trial_that_finishes_during_the_sweep_s_cancel_does_not_stop_the_others(
    db_engine: Engine, session: Session, other: Session
) -> None:
    sweep = create_job(session, kind=JobKind.SWEEP, name="s", config={}, max_attempts=1, principal=ALICE)
    leases: dict[str, str] = {}
    for name in ("t0", "t1"):
        trial = create_job(session, kind=JobKind.TRAINING, name=name, config=tiny_config(), max_attempts=1,
                           parent_id=sweep.id, principal=ALICE)
        leases[trial.id] = new_lease()
        claim_job(session, trial.id, worker="w", lease_token=leases[trial.id])
    finished: list[str] = []

    def finish_first_trial_before_its_cancel(conn: Any, cursor: Any, statement: str, parameters: Any,
                                             *args: Any) -> None:
        # the sweep's trials have been listed; the cancel of the first one is about to run: its worker finishes
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not finished:
            [trial_id] = [t for t in leases if t in str(parameters)]
            finished.append(trial_id)
            transition(other, trial_id, S.SUCCEEDED, principal=WORKER, lease_token=leases[trial_id])

    event.listen(db_engine, "before_cursor_execute", finish_first_trial_before_its_cancel)
    try:
        cancelling = cancel_children(session, sweep.id, principal=ALICE)
    finally:
        event.remove(db_engine, "before_cursor_execute", finish_first_trial_before_its_cancel)
    [first] = finished
    [second] = [t for t in leases if t != first]
    assert [j.id for j in cancelling] == [second]
    assert (_fresh(other, first).state, _fresh(other, second).state) == ("SUCCEEDED", "CANCELLING")


# ---------------------------------------------------------------------------------------------- reports


@pytest.mark.parametrize(("value", "stored"), [
    (float("inf"), "Infinity"), (float("-inf"), "-Infinity"), (float("nan"), "NaN"),
    (0.0, 0.0), (-2.5, -2.5), (7, 7), (True, True), (None, None), ("text", "text"),
    ((1.0, float("inf")), [1.0, "Infinity"]), ([[float("-inf")], {"x": None}], [["-Infinity"], {"x": None}]),
])
def test_report_values_are_stored_as_strict_json(session: Session, value: object, stored: object) -> None:
    job, lease = _running(session)
    set_report(session, job.id, {"section": {"v": value}}, lease_token=lease)
    assert get_report(session, job.id, principal=ADMIN) == {"section": {"v": stored}}


def test_report_with_a_value_that_is_no_json_type_is_refused_naming_the_type(session: Session) -> None:
    job, lease = _running(session)
    with pytest.raises(TypeError) as info:
        set_report(session, job.id, {"section": {"v": {1, 2}}}, lease_token=lease)
    assert str(info.value) == "report values must be JSON types, got set"
    with pytest.raises(ReportNotFound) as missing:
        get_report(session, job.id, principal=ADMIN)
    assert missing.value.job_id == job.id


def test_cancelled_job_without_a_report_gets_one_that_says_so(session: Session) -> None:
    never_started = make_job(session, S.CANCELLED)
    row = _fresh(session, never_started.id)
    assert row.cancel_requested_at is not None and row.finished_at is not None
    assert get_report(session, never_started.id, principal=ADMIN) == {"state": "CANCELLED", "cancelled": {
        "message": "the job was cancelled by request before it started; it has no results",
        "requested_at": row.cancel_requested_at.isoformat(), "finished_at": row.finished_at.isoformat(),
    }}
    job, lease = _running(session)
    request_cancel(session, job.id, principal=ADMIN)
    transition(session, job.id, S.CANCELLED, principal=WORKER, lease_token=lease)
    row = _fresh(session, job.id)
    assert row.cancel_requested_at is not None and row.finished_at is not None
    assert get_report(session, job.id, principal=ADMIN) == {"state": "CANCELLED", "cancelled": {
        "message": f"the job was cancelled by request while running, at phase {row.phase} epoch 0 step 0; "
                   "checkpoints written until then stay downloadable",
        "requested_at": row.cancel_requested_at.isoformat(), "finished_at": row.finished_at.isoformat(),
    }}


def test_cancelled_job_with_a_report_keeps_its_own(session: Session) -> None:
    job, lease = _running(session)
    set_report(session, job.id, {"partial": {"epochs": 1}}, lease_token=lease)
    request_cancel(session, job.id, principal=ADMIN)
    transition(session, job.id, S.CANCELLED, principal=WORKER, lease_token=lease)
    assert get_report(session, job.id, principal=ADMIN) == {"partial": {"epochs": 1}}


# ---------------------------------------------------------------------------------------------- tenants, deletion


def test_another_owner_s_job_is_not_found_for_reads_and_deletes(session: Session, other: Session) -> None:
    job = make_job(session, S.SUCCEEDED, principal=ALICE)
    with pytest.raises(JobNotFound):
        get_job(session, job.id, principal=BOB)
    with pytest.raises(JobNotFound):
        delete_job(session, job.id, principal=BOB)
    assert _fresh(other, job.id).state == "SUCCEEDED"


def test_delete_removes_only_the_named_job(session: Session, other: Session) -> None:
    doomed = make_job(session, S.SUCCEEDED, principal=ALICE)
    kept = make_job(session, S.FAILED, principal=ALICE)
    delete_job(session, doomed.id, principal=ALICE)
    with pytest.raises(JobNotFound):
        _fresh(other, doomed.id)
    assert _fresh(other, kept.id).state == "FAILED"


def test_delete_of_an_unfinished_job_is_refused_saying_why(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(InvalidTransition) as info:
        delete_job(session, job.id, principal=ADMIN)
    assert (info.value.job_id, info.value.current, info.value.target) == (job.id, "RUNNING", "DELETED")
    assert str(info.value) == (f"job {job.id} cannot go from RUNNING to DELETED: "
                               "only SUCCEEDED, FAILED or CANCELLED jobs can be deleted")
