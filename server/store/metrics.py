"""Metric history of a job (ARCHITECTURE.md, "The life of a metric"): append under the lease, read in pages.

Owns: `append_points` (assigns the per-job `seq`, folds latest values, progress and the non-finite summary
into the job row) and `read_points` (paging and per-key stride downsampling). Must not import FastAPI or torch.

`seq` comes from the `jobs.next_seq` counter, bumped by the same fenced UPDATE that checks the lease, so
two concurrent writers can never assign the same seq (the UPDATE serializes them on the job row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.orm import Session

from api_schemas import MetricPoint, MetricsPage, NonfiniteSummary, StoredMetricPoint, fold_nonfinite
from api_schemas.metrics import NONFINITE_PREFIX, PROGRESS_FRACTION
from server.store.db import utcnow
from server.store.jobs import begin_write, fenced_update, get_job
from server.store.models import JobRow, MetricRow
from server.store.principals import Principal

if TYPE_CHECKING:
    from uuid import UUID

#: Largest page `read_points` returns.
MAX_PAGE_POINTS = 10_000


def _progress_fraction(points: Sequence[MetricPoint]) -> float | None:
    """The last `progress/fraction` value in the batch (None if absent). Raises ValueError outside [0, 1]."""
    values = [p.value for p in points if p.key == PROGRESS_FRACTION]
    if not values:
        return None
    fraction = values[-1]
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN
        raise ValueError(f"{PROGRESS_FRACTION} must be in [0, 1], got {fraction}")
    return fraction


def _fold_job_columns(job: Any, points: Sequence[MetricPoint]) -> dict[str, Any]:
    """New values of latest_metrics, nonfinite, nonfinite_total and progress after `points`."""
    latest = dict(job.latest_metrics or {})
    for p in points:
        if not p.key.startswith(NONFINITE_PREFIX):
            latest[p.key] = p.value if math.isfinite(p.value) else None  # JSON has no NaN; read back as NaN
    summary = fold_nonfinite(NonfiniteSummary.model_validate(job.nonfinite or {}), points)
    last = points[-1]
    values: dict[str, Any] = {
        "latest_metrics": latest, "nonfinite": summary.model_dump(mode="json"), "nonfinite_total": summary.total,
        "phase": last.phase, "epoch": last.epoch, "step": last.step,
    }
    fraction = _progress_fraction(points)
    if fraction is not None:
        values["progress_fraction"] = fraction
    return values


def append_points(
    session: Session, job_id: str | UUID, points: Sequence[MetricPoint], *, lease_token: str
) -> list[StoredMetricPoint]:
    """Insert `points` in order with consecutive seqs, update the job's latest values; commits.

    Also renews the lease (heartbeat_at = now); an empty `points` is a plain fenced heartbeat.

    Returns:
        The stored points (seq, ts), ready to publish on `job:{id}:live`.

    Raises:
        JobNotFound; LeaseLost (the job ended, was requeued, or another attempt holds it);
        ValueError (`progress/fraction` outside [0, 1]).
    """
    _progress_fraction(points)  # validate before writing anything
    begin_write(session)
    now = utcnow()
    job = fenced_update(
        session, job_id, lease_token=lease_token,
        values={"next_seq": JobRow.next_seq + len(points), "heartbeat_at": now},
    )
    if not points:
        session.commit()
        return []
    first_seq = job.next_seq - len(points)  # RETURNING gives the bumped counter
    stored = [StoredMetricPoint(**p.model_dump(), seq=first_seq + i, ts=now) for i, p in enumerate(points)]
    session.execute(insert(MetricRow), [{"job_id": str(job_id), **p.model_dump()} for p in stored])
    session.execute(
        update(JobRow).where(JobRow.id == str(job_id)).values(**_fold_job_columns(job, points))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return stored


def _to_point(row: MetricRow) -> StoredMetricPoint:
    value = math.nan if row.value is None else row.value  # SQLite stores NaN as NULL
    return StoredMetricPoint(
        phase=row.phase, epoch=row.epoch, step=row.step, key=row.key, value=value, seq=row.seq, ts=row.ts
    )


def read_points(
    session: Session,
    job_id: str | UUID,
    *,
    principal: Principal,
    since_seq: int = 0,
    keys: Sequence[str] | None = None,
    phase: str | None = None,
    limit: int = 1000,
    max_points: int | None = None,
) -> MetricsPage:
    """Points with seq > `since_seq`, in seq order, at most `limit` (≤ MAX_PAGE_POINTS).

    Args:
        keys, phase: filters (None = all).
        max_points: per key, keep at most this many of the matching points, evenly strided by seq and
            always including the key's last point (server-side downsampling; applies to the window
            seq > since_seq, so later pages are strided on their own).

    Returns:
        A MetricsPage; `next_since_seq` is the last seq returned when more points may follow, else None.

    Raises:
        JobNotFound; ValueError for limit/max_points < 1 or since_seq < 0.
    """
    if limit < 1 or (max_points is not None and max_points < 1) or since_seq < 0:
        raise ValueError("limit and max_points must be >= 1 and since_seq >= 0")
    get_job(session, job_id, principal=principal)
    limit = min(limit, MAX_PAGE_POINTS)
    conds: list[ColumnElement[bool]] = [MetricRow.job_id == str(job_id), MetricRow.seq > since_seq]
    if keys:
        conds.append(MetricRow.key.in_(list(keys)))
    if phase is not None:
        conds.append(MetricRow.phase == phase)
    if max_points is None:
        rows = list(session.scalars(select(MetricRow).where(*conds).order_by(MetricRow.seq).limit(limit + 1)))
    else:
        rows = _downsampled(session, conds, max_points=max_points, limit=limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return MetricsPage(points=[_to_point(r) for r in rows], next_since_seq=rows[-1].seq if more else None)


def _downsampled(
    session: Session, conds: list[ColumnElement[bool]], *, max_points: int, limit: int
) -> list[MetricRow]:
    """Every stride-th matching row per key, counted back from the key's last row (limit + 1 rows at most)."""
    rn = func.row_number().over(partition_by=MetricRow.key, order_by=MetricRow.seq).label("rn")
    cnt = func.count().over(partition_by=MetricRow.key).label("cnt")
    inner = select(MetricRow.job_id, MetricRow.seq, rn, cnt).where(*conds).subquery()
    stride = (inner.c.cnt + (max_points - 1)) // max_points
    picked = select(inner.c.job_id, inner.c.seq).where((inner.c.cnt - inner.c.rn) % stride == 0).subquery()
    stmt = (
        select(MetricRow)
        .join(picked, (MetricRow.job_id == picked.c.job_id) & (MetricRow.seq == picked.c.seq))
        .order_by(MetricRow.seq)
        .limit(limit + 1)
    )
    return list(session.scalars(stmt))
