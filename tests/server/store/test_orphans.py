"""Orphaned artifact files: found only when old enough, only for finished jobs or jobs that are gone; recorded
checkpoints are never touched."""

from __future__ import annotations

import os
import time

from sqlalchemy.orm import Session

from api_schemas import CheckpointInfo, JobState
from server.store import ArtifactStore, delete_job, register_checkpoint, transition, write_atomic
from server.store.orphans import find_orphans, remove_orphans
from server.store.principals import ADMIN, WORKER
from tests.factories import make_job

HOUR_S = 3600.0


def _age(path: os.PathLike[str], seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_unrecorded_files_of_finished_jobs_and_dirs_of_deleted_jobs_are_orphans(
    session: Session, artifacts: ArtifactStore
) -> None:
    done = make_job(session, JobState.RUNNING)
    recorded = artifacts.checkpoint_dir(done.id) / "final.pt"
    digest = write_atomic(recorded, b"weights")
    register_checkpoint(session, done.id, CheckpointInfo(name="final", phase="p", epoch=0, step=1, path=str(recorded),
                                                         size=digest.size, sha256=digest.sha256, is_final=True),
                        lease_token=done.lease_token or "", store=artifacts)
    unrecorded = artifacts.checkpoint_dir(done.id) / "p-s2.pt"
    temp = artifacts.checkpoint_dir(done.id) / ".final.pt.abc.tmp"
    unrecorded.write_bytes(b"x")
    temp.write_bytes(b"y")
    transition(session, done.id, JobState.SUCCEEDED, lease_token=done.lease_token, principal=WORKER)

    running = make_job(session, JobState.RUNNING)
    in_flight = artifacts.checkpoint_dir(running.id) / "p-s1.pt"
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"z")  # its attempt may still record it

    gone = make_job(session, JobState.SUCCEEDED)
    artifacts.ensure_job_dirs(gone.id)
    (artifacts.checkpoint_dir(gone.id) / "final.pt").write_bytes(b"w")
    delete_job(session, gone.id, principal=ADMIN)  # rows gone; the files stayed behind

    assert len(find_orphans(session, artifacts, older_than_s=HOUR_S)) == 0  # all too young
    for path in (recorded, unrecorded, temp, in_flight, artifacts.checkpoint_dir(gone.id) / "final.pt",
                 artifacts.checkpoint_dir(gone.id), artifacts.job_dir(gone.id)):
        _age(path, 2 * HOUR_S)
    orphans = find_orphans(session, artifacts, older_than_s=HOUR_S)
    assert sorted(p.name for p in orphans.files) == sorted([unrecorded.name, temp.name])
    assert orphans.job_dirs == [artifacts.job_dir(gone.id)]
    assert remove_orphans(orphans) == 3
    assert recorded.read_bytes() == b"weights" and in_flight.exists()
    assert not unrecorded.exists() and not temp.exists() and not artifacts.job_dir(gone.id).exists()
    assert len(find_orphans(session, artifacts, older_than_s=HOUR_S)) == 0
