"""The orphan sweep of the artifact store, run by the reaper
(ARCHITECTURE.md, "Artifacts, queues and several machines").

Owns `sweep_orphans`. An object is an orphan when nothing can ever point at it again:
- a temporary key (`_tmp/…`) older than ORPHAN_GRACE_S: a write that crashed before its commit;
- a checkpoint object (`jobs/<id>/checkpoints/…`) of a finished job that no checkpoint record points at, older
  than ORPHAN_GRACE_S: an upload whose worker died before recording it, or the object of a rewritten checkpoint
  that its writer could not remove (a QUEUED, RUNNING or CANCELLING job may yet record what it uploaded);
- any object of a job that no longer exists, older than ORPHAN_GRACE_S (the job's deletion removes its
  objects; this catches a removal that failed);
- an upload's bytes (`uploads/<id>.pt`) without its metadata, older than ORPHAN_GRACE_S.
The grace period is what keeps the sweep from racing with a write in progress: an upload is committed and then
recorded within seconds, far less than ORPHAN_GRACE_S. Imports no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import TERMINAL_STATES
from server.store.db import utcnow
from server.store.files import JOBS_PREFIX, ArtifactStore
from server.store.models import CheckpointRow, JobRow
from server.store.objects import TEMP_PREFIX, ObjectInfo
from server.store.uploads import UPLOADS_SUBDIR

log = logging.getLogger(__name__)
_CHECKPOINTS = "checkpoints"
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


@dataclass
class SweepReport:
    """Keys removed by one sweep."""

    removed: list[str] = field(default_factory=list)


def _old(info: ObjectInfo, cutoff: datetime) -> bool:
    return info.modified_at is not None and info.modified_at < cutoff


def sweep_orphans(artifacts: ArtifactStore, sessions: sessionmaker[Session], *, older_than_s: float,
                  now: datetime | None = None) -> SweepReport:
    """Remove the orphans (module docstring) older than `older_than_s` seconds; returns what was removed."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
    objects = artifacts.objects
    doomed = [info.key for info in objects.list(TEMP_PREFIX) if _old(info, cutoff)]

    by_job: dict[str, list[ObjectInfo]] = {}
    for info in objects.list(JOBS_PREFIX):
        parts = info.key.split("/")
        if len(parts) >= 3:
            by_job.setdefault(parts[1], []).append(info)
    if by_job:
        with sessions() as session:
            rows = session.execute(select(JobRow.id, JobRow.state).where(JobRow.id.in_(list(by_job))))
            states = {job_id: state for job_id, state in rows}
            existing = set(states)
            finished = {job_id for job_id, state in states.items() if state in _TERMINAL}
            recorded = {
                (job_id, path) for job_id, path in session.execute(
                    select(CheckpointRow.job_id, CheckpointRow.path).where(CheckpointRow.job_id.in_(list(existing)))
                )
            }
        for job_id, infos in by_job.items():
            for info in infos:
                if not _old(info, cutoff):
                    continue
                rel = info.key.split("/", 2)[2]
                if job_id not in existing:
                    doomed.append(info.key)
                elif job_id in finished and rel.startswith(f"{_CHECKPOINTS}/") and (job_id, rel) not in recorded:
                    doomed.append(info.key)

    uploads = objects.list(UPLOADS_SUBDIR)
    metadata = {info.key.removesuffix(".json") for info in uploads if info.key.endswith(".json")}
    doomed += [info.key for info in uploads
               if info.key.endswith(".pt") and info.key.removesuffix(".pt") not in metadata and _old(info, cutoff)]

    report = SweepReport()
    for key in doomed:
        try:
            objects.delete(key)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("could not remove orphaned object %s: %s", key, exc)
            continue
        log.info("removed orphaned artifact object %s", key)
        report.removed.append(key)
    return report
