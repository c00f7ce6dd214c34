"""The job state machine and job table (server/store/jobs.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from api_schemas import TERMINAL_STATES, FailureReason, JobKind, JobState
from server.store import (
    ALLOWED_FROM,
    ArtifactStore,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    ReapOutcome,
    ReportNotFound,
    claim_job,
    create_job,
    delete_job,
    get_job,
    get_report,
    heartbeat,
    list_jobs,
    make_session_factory,
    reap_expired,
    request_cancel,
    set_report,
    transition,
    utcnow,
)
from server.store.job_queries import list_events, list_undispatched
from server.store.jobs import find_idempotent_job, record_dispatch
from server.store.models import JobEventRow, MetricRow
from server.store.principals import ADMIN, ANONYMOUS, WORKER, Principal
from tests.factories import make_job, new_lease, tiny_config

S = JobState
LEASE_TIMEOUT_S = 60.0


def _later(seconds: float) -> object:
    return utcnow() + timedelta(seconds=seconds)


def test_create_job_is_queued_with_creation_event(session: Session) -> None:
    job = create_job(session, kind=JobKind.DIAGNOSTIC, name="n", config=tiny_config(), max_attempts=2,
                     principal=ANONYMOUS)
    assert (job.state, job.attempt, job.max_attempts) == (S.QUEUED, 1, 2)
    events = list_events(session, job.id, principal=ADMIN)
    assert [(e.from_state, e.to_state) for e in events] == [(None, "QUEUED")]


def _attempt(session: Session, job_id: str, to: JobState) -> None:
    if to is S.RUNNING:
        transition(session, job_id, to, lease_token=new_lease(), principal=ADMIN)
    elif to is S.FAILED:
        transition(session, job_id, to, failure_reason=FailureReason.INTERNAL, message="x", principal=ADMIN)
    elif to is S.CANCELLED and get_job(session, job_id, principal=ADMIN).state == S.RUNNING:  # only a pruned trial
        transition(session, job_id, to, failure_reason=FailureReason.PRUNED, message="pruned", principal=ADMIN)
    else:
        transition(session, job_id, to, principal=ADMIN)


def test_a_running_job_is_cancelled_directly_only_when_pruned(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(InvalidTransition):
        transition(session, job.id, S.CANCELLED, lease_token=job.lease_token, principal=WORKER)
    pruned = transition(session, job.id, S.CANCELLED, lease_token=job.lease_token, principal=WORKER,
                        failure_reason=FailureReason.PRUNED, message="pruned after epoch 1")
    assert (pruned.state, pruned.failure_reason, pruned.finished_at is not None) == (S.CANCELLED, "PRUNED", True)


def test_transition_table_every_pair_is_allowed_or_raises(session: Session) -> None:
    for source in JobState:
        for target in JobState:
            job = make_job(session, source)
            if source in ALLOWED_FROM[target]:
                _attempt(session, job.id, target)
                assert get_job(session, job.id, principal=ADMIN).state == target, (source, target)
                last = list_events(session, job.id, principal=ADMIN)[-1]
                assert (last.from_state, last.to_state) == (source.value, target.value)
            else:
                with pytest.raises(InvalidTransition):
                    _attempt(session, job.id, target)
                assert get_job(session, job.id, principal=ADMIN).state == source, (source, target)


def test_transition_table_has_no_way_out_of_terminal_states() -> None:
    for target, sources in ALLOWED_FROM.items():
        assert not (sources & TERMINAL_STATES), target


def test_transition_from_terminal_raises(session: Session) -> None:
    job = make_job(session, S.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        transition(session, job.id, S.CANCELLING, principal=ADMIN)


def test_transition_with_wrong_lease_raises_lease_lost(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(LeaseLost):
        transition(session, job.id, S.SUCCEEDED, lease_token="someone-else", principal=ADMIN)
    assert get_job(session, job.id, principal=ADMIN).state == S.RUNNING


def test_transition_unknown_job_raises_not_found(session: Session) -> None:
    with pytest.raises(JobNotFound):
        transition(session, "no-such-job", S.CANCELLED, principal=ADMIN)


def test_transition_to_failed_requires_reason(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(ValueError):
        transition(session, job.id, S.FAILED, principal=ADMIN)


def test_failed_transition_records_reason_and_clears_lease(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    done = transition(
        session, job.id, S.FAILED, lease_token=job.lease_token, failure_reason=FailureReason.OOM, message="oom",
        principal=ADMIN,
    )
    assert (done.failure_reason, done.failure_message, done.lease_token) == ("OOM", "oom", None)
    assert done.finished_at is not None


def test_claim_job_sets_lease_and_worker(session: Session) -> None:
    job = make_job(session)
    claimed = claim_job(session, job.id, worker="gpu0@host", lease_token="L1")
    assert claimed is not None
    assert (claimed.state, claimed.lease_token, claimed.worker) == (S.RUNNING, "L1", "gpu0@host")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None


def test_claim_job_twice_returns_none(session: Session) -> None:
    job = make_job(session)
    assert claim_job(session, job.id, worker="w1", lease_token="L1") is not None
    assert claim_job(session, job.id, worker="w2", lease_token="L2") is None
    assert get_job(session, job.id, principal=ADMIN).lease_token == "L1"


def test_claim_missing_job_returns_none(session: Session) -> None:
    assert claim_job(session, "gone", worker="w", lease_token="L") is None


def test_concurrent_claims_only_one_wins(db_engine: Engine, session: Session) -> None:
    job = make_job(session)
    factory = make_session_factory(db_engine)
    results: list[object] = []

    def claim(i: int) -> None:
        with factory() as s:
            results.append(claim_job(s, job.id, worker=f"w{i}", lease_token=f"L{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    n_events = session.scalar(select(func.count()).select_from(JobEventRow).where(JobEventRow.job_id == job.id))
    assert n_events == 2  # created + one claim


def test_heartbeat_returns_cancelling_after_cancel(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    assert heartbeat(session, job.id, lease_token=job.lease_token) == S.RUNNING
    request_cancel(session, job.id, principal=ADMIN)
    assert heartbeat(session, job.id, lease_token=job.lease_token) == S.CANCELLING


def test_heartbeat_with_stale_lease_raises(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(LeaseLost):
        heartbeat(session, job.id, lease_token="stale")


def test_heartbeat_after_terminal_raises_lease_lost(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    transition(session, job.id, S.SUCCEEDED, lease_token=job.lease_token, principal=ADMIN)
    with pytest.raises(LeaseLost):
        heartbeat(session, job.id, lease_token=job.lease_token)


def test_request_cancel_queued_job_cancels_directly(session: Session) -> None:
    job = make_job(session)
    cancelled = request_cancel(session, job.id, principal=ADMIN)
    assert cancelled.state == S.CANCELLED
    assert cancelled.cancel_requested_at is not None and cancelled.finished_at is not None


def test_request_cancel_running_job_is_cancelling_and_idempotent(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    assert request_cancel(session, job.id, principal=ADMIN).state == S.CANCELLING
    assert request_cancel(session, job.id, principal=ADMIN).state == S.CANCELLING
    assert [e.to_state for e in list_events(session, job.id, principal=ADMIN)].count("CANCELLING") == 1


@pytest.mark.parametrize("state", [S.SUCCEEDED, S.FAILED])
def test_request_cancel_finished_job_raises(session: Session, state: JobState) -> None:
    job = make_job(session, state)
    with pytest.raises(InvalidTransition):
        request_cancel(session, job.id, principal=ADMIN)


def test_reap_requeues_expired_running_job(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    record_dispatch(session, job.id, celery_task_id="task-1")
    actions = reap_expired(session, lease_timeout_s=LEASE_TIMEOUT_S, cancel_grace_s=60, now=_later(61))
    assert [(a.job_id, a.outcome, a.celery_task_id) for a in actions] == [(job.id, ReapOutcome.REQUEUED, "task-1")]
    requeued = get_job(session, job.id, principal=ADMIN)
    assert (requeued.state, requeued.attempt) == (S.QUEUED, 2)
    assert (requeued.lease_token, requeued.celery_task_id) == (None, None)
    with pytest.raises(LeaseLost):
        heartbeat(session, job.id, lease_token=job.lease_token)
    again = claim_job(session, job.id, worker="w2", lease_token="L2")
    assert again is not None and again.attempt == 2


def test_reap_fails_job_when_attempts_exhausted(session: Session) -> None:
    job = make_job(session, S.RUNNING, max_attempts=1)
    actions = reap_expired(session, lease_timeout_s=LEASE_TIMEOUT_S, cancel_grace_s=60, now=_later(61))
    assert [a.outcome for a in actions] == [ReapOutcome.FAILED_WORKER_LOST]
    failed = get_job(session, job.id, principal=ADMIN)
    assert (failed.state, failed.failure_reason) == (S.FAILED, FailureReason.WORKER_LOST)


def test_reap_cancels_expired_cancelling_job(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    actions = reap_expired(session, lease_timeout_s=LEASE_TIMEOUT_S, cancel_grace_s=600, now=_later(61))
    assert [a.outcome for a in actions] == [ReapOutcome.CANCELLED_WORKER_LOST]
    assert get_job(session, job.id, principal=ADMIN).state == S.CANCELLED


def test_reap_escalates_cancel_after_grace(session: Session) -> None:
    job = make_job(session, S.CANCELLING)
    heartbeat(session, job.id, lease_token=job.lease_token)
    actions = reap_expired(session, lease_timeout_s=3600, cancel_grace_s=10, now=_later(11))
    assert [a.outcome for a in actions] == [ReapOutcome.CANCELLED_GRACE_EXPIRED]
    assert get_job(session, job.id, principal=ADMIN).state == S.CANCELLED


def test_reap_leaves_live_lease_alone(session: Session) -> None:
    running = make_job(session, S.RUNNING)
    make_job(session, S.QUEUED)
    assert reap_expired(session, lease_timeout_s=LEASE_TIMEOUT_S, cancel_grace_s=60, now=_later(30)) == []
    assert get_job(session, running.id, principal=ADMIN).state == S.RUNNING


def test_list_jobs_newest_first_in_pages(session: Session) -> None:
    ids = [make_job(session).id for _ in range(5)]
    first = list_jobs(session, limit=2, principal=ADMIN)
    second = list_jobs(session, limit=2, page_token=first.next_page_token, principal=ADMIN)
    third = list_jobs(session, limit=2, page_token=second.next_page_token, principal=ADMIN)
    seen = [j.id for page in (first, second, third) for j in page.jobs]
    assert seen == ids[::-1]
    assert third.next_page_token is None


def test_list_jobs_filters_by_state_and_kind(session: Session) -> None:
    make_job(session)
    running = make_job(session, S.RUNNING, kind=JobKind.TRAINING)
    assert [j.id for j in list_jobs(session, state=S.RUNNING, principal=ADMIN).jobs] == [running.id]
    assert [j.id for j in list_jobs(session, kind=JobKind.TRAINING, principal=ADMIN).jobs] == [running.id]


def test_list_jobs_with_forged_token_raises_invalid_cursor(session: Session) -> None:
    with pytest.raises(InvalidCursor):
        list_jobs(session, page_token="not-a-token", principal=ADMIN)


OWNER_P = Principal(id="key-p", owner="key-p")


def test_create_job_with_same_idempotency_key_returns_first_job(session: Session) -> None:
    args = {"kind": JobKind.DIAGNOSTIC, "name": None, "config": tiny_config(), "max_attempts": 2}
    first = create_job(session, **args, principal=OWNER_P, idempotency_key="k1", body_sha256="a" * 64)
    again = create_job(session, **args, principal=OWNER_P, idempotency_key="k1", body_sha256="a" * 64)
    assert again.id == first.id
    found = find_idempotent_job(session, principal=OWNER_P, key="k1", body_sha256="a" * 64)
    assert found is not None and found.id == first.id


def test_idempotency_key_with_other_body_raises_conflict(session: Session) -> None:
    args = {"kind": JobKind.DIAGNOSTIC, "name": None, "config": tiny_config(), "max_attempts": 2}
    create_job(session, **args, principal=ANONYMOUS, idempotency_key="k1", body_sha256="a" * 64)
    with pytest.raises(IdempotencyConflict):
        find_idempotent_job(session, principal=ANONYMOUS, key="k1", body_sha256="b" * 64)


def test_delete_terminal_job_removes_rows_and_leaves_files_to_the_artifact_store(
    session: Session, artifacts: ArtifactStore
) -> None:
    job = make_job(session, S.SUCCEEDED)
    artifacts.objects.write(artifacts.log_key(job.id), b"log")
    delete_job(session, job.id, principal=ADMIN)
    with pytest.raises(JobNotFound):
        get_job(session, job.id, principal=ADMIN)
    assert artifacts.objects.read_range(artifacts.log_key(job.id), 0, 10) == b"log"
    artifacts.delete_job_files(job.id)
    assert artifacts.objects.list(artifacts.job_prefix(job.id)) == []
    assert session.scalar(select(func.count()).select_from(JobEventRow).where(JobEventRow.job_id == job.id)) == 0
    assert session.scalar(select(func.count()).select_from(MetricRow).where(MetricRow.job_id == job.id)) == 0


def test_delete_running_job_raises(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(InvalidTransition):
        delete_job(session, job.id, principal=ADMIN)
    assert get_job(session, job.id, principal=ADMIN).state == S.RUNNING


def test_set_report_stores_nonfinite_values_as_strings(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    set_report(session, job.id, {"verdict": {"k_acc": float("nan"), "ok": True}}, lease_token=job.lease_token)
    assert get_report(session, job.id, principal=ADMIN) == {"verdict": {"k_acc": "NaN", "ok": True}}


def test_get_report_before_it_exists_raises(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(ReportNotFound):
        get_report(session, job.id, principal=ADMIN)


def test_set_report_with_stale_lease_raises(session: Session) -> None:
    job = make_job(session, S.RUNNING)
    with pytest.raises(LeaseLost):
        set_report(session, job.id, {"a": {}}, lease_token="stale")


def test_list_undispatched_finds_queued_jobs_without_task(session: Session) -> None:
    waiting = make_job(session)
    sent = make_job(session)
    record_dispatch(session, sent.id, celery_task_id="t")
    assert list_undispatched(session, older_than_s=5, now=_later(10)) == [waiting.id]
    assert list_undispatched(session, older_than_s=5) == []


def test_list_jobs_filters_by_whole_tags_and_by_parent(session: Session) -> None:
    from server.store.job_queries import list_children, list_jobs

    sweep = create_job(session, kind=JobKind.SWEEP, name="s", config={}, max_attempts=1, tags=["a_b", "x"],
                       principal=ANONYMOUS)
    child = create_job(session, kind=JobKind.TRAINING, name="t", config=tiny_config(), max_attempts=1,
                       parent_id=sweep.id, tags=["a_b", "trial:0"], principal=ANONYMOUS)
    create_job(session, kind=JobKind.TRAINING, name="u", config=tiny_config(), max_attempts=1, tags=["aXb", "a_b2"],
               principal=ANONYMOUS)
    assert {j.id for j in list_jobs(session, tag="a_b", principal=ADMIN).jobs} == {sweep.id, child.id}  # `_`: literal
    assert [j.id for j in list_jobs(session, parent_id=sweep.id, principal=ADMIN).jobs] == [child.id]
    assert [j.id for j in list_children(session, sweep.id, principal=ADMIN)] == [child.id]
    other = Principal(id="key-0000000000000000", owner="key-0000000000000000")
    assert list_children(session, sweep.id, principal=other) == []  # another tenant's trials stay hidden
    assert (child.parent_id, child.tags) == (sweep.id, ["a_b", "trial:0"])
