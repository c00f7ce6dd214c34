"""Orphaned artifact objects (worker/artifact_sweep.py): found only when old enough; unrecorded checkpoints only
of finished jobs; every object of a job that is gone; recorded checkpoints are never touched."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy.orm import Session

from api_schemas import JobState
from server.store import ArtifactStore, delete_job, make_session_factory, register_checkpoint, transition, utcnow
from server.store.principals import ADMIN, WORKER
from tests.factories import make_job, stored_checkpoint
from worker.artifact_sweep import sweep_orphans

HOUR_S = 3600.0


def test_unrecorded_objects_of_finished_jobs_and_objects_of_deleted_jobs_are_orphans(
    session: Session, artifacts: ArtifactStore
) -> None:
    done = make_job(session, JobState.RUNNING)
    recorded = stored_checkpoint(artifacts, done.id, "final", b"weights", step=1, final=True)
    register_checkpoint(session, done.id, recorded, lease_token=done.lease_token or "", store=artifacts)
    unrecorded = stored_checkpoint(artifacts, done.id, "p-s2", b"x", step=2)
    transition(session, done.id, JobState.SUCCEEDED, lease_token=done.lease_token, principal=WORKER)

    running = make_job(session, JobState.RUNNING)
    in_flight = stored_checkpoint(artifacts, running.id, "p-s1", b"z", step=1)  # its attempt may still record it

    gone = make_job(session, JobState.SUCCEEDED)
    stored_checkpoint(artifacts, gone.id, "final", b"w", step=1)
    delete_job(session, gone.id, principal=ADMIN)  # rows gone; the objects stayed behind

    sessions = make_session_factory(session.get_bind())  # type: ignore[arg-type]
    assert sweep_orphans(artifacts, sessions, older_than_s=HOUR_S).removed == []  # all too young
    later = utcnow() + timedelta(hours=2)
    swept = sweep_orphans(artifacts, sessions, older_than_s=HOUR_S, now=later)
    gone_key = artifacts.job_key(gone.id, f"checkpoints/final.{hashlib.sha256(b'w').hexdigest()[:16]}.pt")
    assert sorted(swept.removed) == sorted([artifacts.job_key(done.id, unrecorded.path), gone_key])
    assert artifacts.stat(done.id, recorded.path) is not None and artifacts.stat(running.id, in_flight.path)
    assert sweep_orphans(artifacts, sessions, older_than_s=HOUR_S, now=later).removed == []

