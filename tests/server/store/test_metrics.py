"""Metric history (server/store/metrics.py): seq assignment, fencing, folding, paging, downsampling."""

from __future__ import annotations

import math
import threading

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api_schemas import JobState, MetricPoint
from api_schemas.metrics import NONFINITE_CAUSE_PREFIX, NONFINITE_TERM_PREFIX, PROGRESS_FRACTION, TRAIN_LOSS, VAL_K_ACC
from server.store import JobNotFound, LeaseLost, append_points, get_job, make_session_factory, read_points
from server.store.principals import ADMIN
from tests.factories import make_job


def _points(n: int, key: str = TRAIN_LOSS, *, phase: str = "k_only", start_step: int = 0) -> list[MetricPoint]:
    return [MetricPoint(phase=phase, epoch=0, step=start_step + i, key=key, value=float(i)) for i in range(n)]


def test_append_points_assigns_consecutive_seq_from_one(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    first = append_points(session, job.id, _points(3), lease_token=job.lease_token)
    second = append_points(session, job.id, _points(2), lease_token=job.lease_token)
    assert [p.seq for p in first + second] == [1, 2, 3, 4, 5]


def test_append_points_with_stale_lease_raises(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    with pytest.raises(LeaseLost):
        append_points(session, job.id, _points(1), lease_token="stale")
    assert read_points(session, job.id, principal=ADMIN).points == []


def test_append_points_after_job_finished_raises(session: Session) -> None:
    job = make_job(session, JobState.SUCCEEDED)
    with pytest.raises(LeaseLost):
        append_points(session, job.id, _points(1), lease_token="any")


def test_append_points_folds_latest_progress_and_nonfinite(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    points = [
        MetricPoint(phase="k_only", epoch=1, step=7, key=TRAIN_LOSS, value=0.5),
        MetricPoint(phase="k_only", epoch=1, step=8, key=NONFINITE_CAUSE_PREFIX + "loss", value=1.0),
        MetricPoint(phase="k_only", epoch=1, step=8, key=NONFINITE_TERM_PREFIX + "k", value=1.0),
        MetricPoint(phase="k_only", epoch=1, step=9, key=PROGRESS_FRACTION, value=0.25),
    ]
    append_points(session, job.id, points, lease_token=job.lease_token)
    row = get_job(session, job.id, principal=ADMIN)
    assert row.latest_metrics == {TRAIN_LOSS: 0.5, PROGRESS_FRACTION: 0.25}
    assert (row.phase, row.epoch, row.step, row.progress_fraction) == ("k_only", 1, 9, 0.25)
    assert row.nonfinite["total"] == 1 and row.nonfinite["by_cause"] == {"loss": 1}
    assert row.nonfinite["last"]["loss_terms"] == ["k"]
    assert row.nonfinite_total == 1


def test_append_points_refuses_progress_outside_unit_interval(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    bad = [MetricPoint(phase="p", epoch=0, step=0, key=PROGRESS_FRACTION, value=1.5)]
    with pytest.raises(ValueError):
        append_points(session, job.id, bad, lease_token=job.lease_token)


def test_nonfinite_value_round_trips_as_nan(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    append_points(session, job.id, [MetricPoint(phase="p", epoch=0, step=0, key=TRAIN_LOSS, value=math.nan)],
                  lease_token=job.lease_token)
    assert math.isnan(read_points(session, job.id, principal=ADMIN).points[0].value)
    assert get_job(session, job.id, principal=ADMIN).latest_metrics == {TRAIN_LOSS: None}


def test_concurrent_appends_never_share_a_seq(db_engine: Engine, session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    factory = make_session_factory(db_engine)
    n_threads, n_batches, batch = 4, 5, 10

    def writer() -> None:
        with factory() as s:
            for _ in range(n_batches):
                append_points(s, job.id, _points(batch), lease_token=job.lease_token)

    threads = [threading.Thread(target=writer) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [p.seq for p in read_points(session, job.id, limit=10_000, principal=ADMIN).points]
    assert seqs == list(range(1, n_threads * n_batches * batch + 1))


def test_read_points_filters_by_key_phase_and_since_seq(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    append_points(session, job.id, _points(3) + _points(2, VAL_K_ACC, phase="joint"), lease_token=job.lease_token)
    assert [p.seq for p in read_points(session, job.id, keys=[VAL_K_ACC], principal=ADMIN).points] == [4, 5]
    assert [p.seq for p in read_points(session, job.id, phase="k_only", principal=ADMIN).points] == [1, 2, 3]
    assert [p.seq for p in read_points(session, job.id, since_seq=3, principal=ADMIN).points] == [4, 5]


def test_read_points_pages_with_next_since_seq(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    append_points(session, job.id, _points(5), lease_token=job.lease_token)
    page = read_points(session, job.id, limit=3, principal=ADMIN)
    assert ([p.seq for p in page.points], page.next_since_seq) == ([1, 2, 3], 3)
    rest = read_points(session, job.id, since_seq=page.next_since_seq, limit=3, principal=ADMIN)
    assert ([p.seq for p in rest.points], rest.next_since_seq) == ([4, 5], None)


def test_read_points_max_points_downsamples_each_key_keeping_its_last(session: Session) -> None:
    job = make_job(session, JobState.RUNNING)
    append_points(session, job.id, _points(100) + _points(4, VAL_K_ACC), lease_token=job.lease_token)
    page = read_points(session, job.id, max_points=10, principal=ADMIN)
    loss = [p for p in page.points if p.key == TRAIN_LOSS]
    acc = [p for p in page.points if p.key == VAL_K_ACC]
    assert len(loss) == 10 and loss[-1].step == 99
    assert [p.step for p in loss] == list(range(9, 100, 10))  # stride 10, anchored at the last point
    assert len(acc) == 4  # fewer points than max_points: all kept


def test_read_points_unknown_job_raises(session: Session) -> None:
    with pytest.raises(JobNotFound):
        read_points(session, "missing", principal=ADMIN)
