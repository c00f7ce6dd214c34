"""The artifact directory (server/store/artifacts.py): atomic writes, path safety, checkpoint records, logs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api_schemas import CheckpointInfo, JobState
from server.store import (
    ArtifactRejected,
    ArtifactStore,
    CheckpointNotFound,
    LeaseLost,
    get_checkpoint,
    latest_resume_checkpoint,
    list_checkpoints,
    read_log,
    register_checkpoint,
    write_atomic,
)
from server.store.artifacts import atomic_writer, checkpoint_file
from server.store.errors import OffsetOutOfRange
from server.store.principals import ADMIN
from tests.factories import make_job


def _write_checkpoint(
    store: ArtifactStore, job_id: str, name: str, *, step: int, final: bool = False
) -> CheckpointInfo:
    path = store.checkpoint_dir(job_id) / f"{name}.pt"
    digest = write_atomic(path, f"weights of {name}".encode())
    return CheckpointInfo(
        name=name, phase="k_only", epoch=0, step=step, path=str(path), size=digest.size, sha256=digest.sha256,
        is_final=final,
    )


def test_write_atomic_returns_size_and_sha256(tmp_path: Path) -> None:
    digest = write_atomic(tmp_path / "a" / "f.bin", [b"abc", b"def"])
    assert digest.size == 6
    assert digest.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"abcdef"


def test_atomic_writer_failure_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    with pytest.raises(RuntimeError), atomic_writer(target) as writer:
        writer.write(b"partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_resolve_refuses_traversal_and_absolute_paths(artifacts: ArtifactStore) -> None:
    for bad in ["../other/x", "checkpoints/../../x", "/etc/passwd", "", "a\\..\\b"]:
        with pytest.raises(ArtifactRejected):
            artifacts.resolve("job-1", bad)


def test_resolve_refuses_symlinks(artifacts: ArtifactStore, tmp_path: Path) -> None:
    artifacts.ensure_job_dirs("job-1")
    (tmp_path / "secret").write_text("s")
    (artifacts.checkpoint_dir("job-1") / "link.pt").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactRejected):
        artifacts.resolve("job-1", "checkpoints/link.pt")


def test_job_dir_refuses_ids_that_are_paths(artifacts: ArtifactStore) -> None:
    with pytest.raises(ArtifactRejected):
        artifacts.job_dir("../x")


def test_register_and_get_checkpoint_with_aliases(session: Session, artifacts: ArtifactStore) -> None:
    job = make_job(session, JobState.RUNNING)
    register_checkpoint(session, job.id, _write_checkpoint(artifacts, job.id, "k_only-s10", step=10),
                        lease_token=job.lease_token, store=artifacts)
    register_checkpoint(session, job.id, _write_checkpoint(artifacts, job.id, "final", step=20, final=True),
                        lease_token=job.lease_token, store=artifacts)
    assert [c.name for c in list_checkpoints(session, job.id, principal=ADMIN)] == ["k_only-s10", "final"]
    assert get_checkpoint(session, job.id, "final", principal=ADMIN).step == 20
    assert get_checkpoint(session, job.id, "latest", principal=ADMIN).step == 20
    assert get_checkpoint(session, job.id, "k_only-s10", principal=ADMIN).path == "checkpoints/k_only-s10.pt"
    row = latest_resume_checkpoint(session, job.id)
    assert row is not None and checkpoint_file(artifacts, row).read_bytes() == b"weights of final"


def test_register_checkpoint_same_name_replaces_record(session: Session, artifacts: ArtifactStore) -> None:
    job = make_job(session, JobState.RUNNING)
    for step in (5, 9):
        info = _write_checkpoint(artifacts, job.id, "mid", step=step)
        register_checkpoint(session, job.id, info, lease_token=job.lease_token, store=artifacts)
    assert [(c.name, c.step) for c in list_checkpoints(session, job.id, principal=ADMIN)] == [("mid", 9)]


def test_register_checkpoint_outside_job_dir_is_rejected(
    session: Session, artifacts: ArtifactStore, tmp_path: Path
) -> None:
    job = make_job(session, JobState.RUNNING)
    outside = tmp_path / "evil.pt"
    digest = write_atomic(outside, b"x")
    info = CheckpointInfo(name="evil", phase="p", epoch=0, step=0, path=str(outside), size=digest.size,
                          sha256=digest.sha256)
    with pytest.raises(ArtifactRejected):
        register_checkpoint(session, job.id, info, lease_token=job.lease_token, store=artifacts)


def test_register_checkpoint_with_wrong_size_is_rejected(session: Session, artifacts: ArtifactStore) -> None:
    job = make_job(session, JobState.RUNNING)
    info = _write_checkpoint(artifacts, job.id, "c", step=1).model_copy(update={"size": 1})
    with pytest.raises(ArtifactRejected):
        register_checkpoint(session, job.id, info, lease_token=job.lease_token, store=artifacts)


def test_register_checkpoint_symlink_is_rejected(session: Session, artifacts: ArtifactStore, tmp_path: Path) -> None:
    job = make_job(session, JobState.RUNNING)
    info = _write_checkpoint(artifacts, job.id, "c", step=1)
    link = artifacts.checkpoint_dir(job.id) / "link.pt"
    link.symlink_to(info.path)
    with pytest.raises(ArtifactRejected):
        register_checkpoint(session, job.id, info.model_copy(update={"path": str(link)}),
                            lease_token=job.lease_token, store=artifacts)


def test_register_checkpoint_with_stale_lease_raises(session: Session, artifacts: ArtifactStore) -> None:
    job = make_job(session, JobState.RUNNING)
    info = _write_checkpoint(artifacts, job.id, "c", step=1)
    with pytest.raises(LeaseLost):
        register_checkpoint(session, job.id, info, lease_token="stale", store=artifacts)


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/b", "missing"])
def test_get_checkpoint_bad_or_unknown_name_raises(session: Session, name: str) -> None:
    job = make_job(session, JobState.RUNNING)
    with pytest.raises(CheckpointNotFound):
        get_checkpoint(session, job.id, name, principal=ADMIN)


def test_read_log_by_offset(artifacts: ArtifactStore) -> None:
    artifacts.ensure_job_dirs("job-1")
    artifacts.log_path("job-1").write_bytes(b"line 1\nline 2\n")
    first = read_log(artifacts, "job-1", offset=0, limit=7)
    rest = read_log(artifacts, "job-1", offset=first.next_offset)
    assert (first.data, first.next_offset) == (b"line 1\n", 7)
    assert (rest.data, rest.next_offset) == (b"line 2\n", 14)
    with pytest.raises(OffsetOutOfRange):
        read_log(artifacts, "job-1", offset=100)


def test_read_missing_log_is_empty(artifacts: ArtifactStore) -> None:
    assert read_log(artifacts, "job-2").data == b""


def test_delete_job_files_removes_the_job_directory_only(artifacts: ArtifactStore) -> None:
    for job_id in ("job-a", "job-b"):
        artifacts.ensure_job_dirs(job_id)
        artifacts.log_path(job_id).write_text(job_id)
    artifacts.delete_job_files("job-a")
    artifacts.delete_job_files("job-a")  # idempotent: nothing left to remove
    assert not artifacts.job_dir("job-a").exists()
    assert artifacts.log_path("job-b").read_text() == "job-b"


def test_delete_job_files_refuses_a_symlinked_job_directory(artifacts: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (artifacts.root / "jobs").mkdir(parents=True, exist_ok=True)
    artifacts.job_dir("job-link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactRejected):
        artifacts.delete_job_files("job-link")
    assert (outside / "keep.txt").exists()
