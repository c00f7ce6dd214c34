"""The artifact store (server/store/artifacts.py, files.py): key safety, checkpoint records, logs, removal."""

from __future__ import annotations

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
)
from server.store.artifacts import checkpoint_object
from server.store.errors import OffsetOutOfRange
from server.store.objects import LocalObjectStore
from server.store.principals import ADMIN
from tests.factories import make_job, stored_checkpoint


def _write_checkpoint(
    store: ArtifactStore, job_id: str, name: str, *, step: int, final: bool = False
) -> CheckpointInfo:
    return stored_checkpoint(store, job_id, name, f"weights of {name}".encode(), step=step, final=final)


def _local(artifacts: ArtifactStore) -> LocalObjectStore:
    assert isinstance(artifacts.objects, LocalObjectStore)
    return artifacts.objects


def test_job_key_refuses_traversal_and_absolute_paths(artifacts: ArtifactStore) -> None:
    for bad in ["../other/x", "checkpoints/../../x", "/etc/passwd", "", "a\\..\\b"]:
        with pytest.raises(ArtifactRejected):
            artifacts.job_key("job-1", bad)


def test_a_symlink_in_the_directory_store_is_refused(artifacts: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    link = _local(artifacts).path("jobs/job-1/checkpoints/link.pt")
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactRejected):
        artifacts.stat("job-1", "checkpoints/link.pt")


def test_job_prefix_refuses_ids_that_are_paths(artifacts: ArtifactStore) -> None:
    with pytest.raises(ArtifactRejected):
        artifacts.job_prefix("../x")


def test_register_and_get_checkpoint_with_aliases(session: Session, artifacts: ArtifactStore) -> None:
    job = make_job(session, JobState.RUNNING)
    register_checkpoint(session, job.id, _write_checkpoint(artifacts, job.id, "k_only-s10", step=10),
                        lease_token=job.lease_token, store=artifacts)
    register_checkpoint(session, job.id, _write_checkpoint(artifacts, job.id, "final", step=20, final=True),
                        lease_token=job.lease_token, store=artifacts)
    assert [c.name for c in list_checkpoints(session, job.id, principal=ADMIN)] == ["k_only-s10", "final"]
    assert get_checkpoint(session, job.id, "final", principal=ADMIN).step == 20
    assert get_checkpoint(session, job.id, "latest", principal=ADMIN).step == 20
    assert get_checkpoint(session, job.id, "k_only-s10", principal=ADMIN).path.startswith("checkpoints/k_only-s10.")
    row = latest_resume_checkpoint(session, job.id)
    assert row is not None
    key, info = checkpoint_object(artifacts, row)
    assert artifacts.objects.read_range(key, 0, info.size) == b"weights of final"


def test_register_checkpoint_same_name_replaces_record(session: Session, artifacts: ArtifactStore) -> None:
    job = make_job(session, JobState.RUNNING)
    for step in (5, 9):
        info = _write_checkpoint(artifacts, job.id, "mid", step=step)
        register_checkpoint(session, job.id, info, lease_token=job.lease_token, store=artifacts)
    assert [(c.name, c.step) for c in list_checkpoints(session, job.id, principal=ADMIN)] == [("mid", 9)]


def test_register_checkpoint_outside_the_job_or_missing_is_rejected(
    session: Session, artifacts: ArtifactStore, tmp_path: Path
) -> None:
    job = make_job(session, JobState.RUNNING)
    other = _write_checkpoint(artifacts, "other-job", "c", step=1)
    for path in (str(tmp_path / "evil.pt"), f"../other-job/{other.path}", "checkpoints/never-uploaded.pt"):
        info = other.model_copy(update={"path": path})
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
    link = _local(artifacts).path(artifacts.job_key(job.id, "checkpoints/link.pt"))
    link.symlink_to(_local(artifacts).path(artifacts.job_key(job.id, info.path)))
    with pytest.raises(ArtifactRejected):
        register_checkpoint(session, job.id, info.model_copy(update={"path": "checkpoints/link.pt"}),
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
    artifacts.objects.write(artifacts.log_key("job-1"), b"line 1\nline 2\n")
    first = read_log(artifacts, "job-1", offset=0, limit=7)
    rest = read_log(artifacts, "job-1", offset=first.next_offset)
    assert (first.data, first.next_offset) == (b"line 1\n", 7)
    assert (rest.data, rest.next_offset) == (b"line 2\n", 14)
    with pytest.raises(OffsetOutOfRange):
        read_log(artifacts, "job-1", offset=100)


def test_read_missing_log_is_empty(artifacts: ArtifactStore) -> None:
    assert read_log(artifacts, "job-2").data == b""


def test_delete_job_files_removes_the_job_objects_only(artifacts: ArtifactStore) -> None:
    for job_id in ("job-a", "job-b"):
        artifacts.objects.write(artifacts.log_key(job_id), job_id.encode())
        _write_checkpoint(artifacts, job_id, "c", step=1)
    artifacts.delete_job_files("job-a")
    artifacts.delete_job_files("job-a")  # idempotent: nothing left to remove
    assert artifacts.objects.list(artifacts.job_prefix("job-a")) == []
    assert artifacts.objects.read_range(artifacts.log_key("job-b"), 0, 100) == b"job-b"


def test_delete_job_files_refuses_a_symlinked_job_directory(artifacts: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    link = _local(artifacts).root / "jobs" / "job-link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactRejected):
        artifacts.delete_job_files("job-link")
    assert (outside / "keep.txt").exists()
