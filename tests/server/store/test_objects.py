"""The artifact store's object interface (server/store/objects.py) on a directory and on S3 (moto server):
temporary key then commit, byte ranges, listing, removal, digests, key checks, presigned URLs; and the
checkpoint upload, download and orphan sweep built on it."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from api_schemas import CheckpointInfo, JobState
from server.store import (
    ArtifactRejected,
    ArtifactStore,
    make_session_factory,
    register_checkpoint,
    transition,
    utcnow,
)
from server.store.objects import TEMP_PREFIX, FsspecObjectStore, LocalObjectStore, ObjectStore, open_object_store
from server.store.principals import WORKER
from tests.factories import make_job
from tests.s3 import moto_server, s3_env  # noqa: F401  (fixtures)
from worker.artifact_sweep import sweep_orphans

DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_object_store(tmp_path / "objects")
    return open_object_store(request.getfixturevalue("s3_env"))


def test_open_object_store_picks_the_implementation(tmp_path: Path, s3_env: str) -> None:  # noqa: F811
    assert isinstance(open_object_store(tmp_path), LocalObjectStore)
    assert isinstance(open_object_store(f"file://{tmp_path}"), LocalObjectStore)
    assert isinstance(open_object_store(s3_env), FsspecObjectStore)


def test_write_read_range_stat_list_delete(store: ObjectStore) -> None:
    digest = store.write("jobs/a/checkpoints/x.pt", [DATA[:1000], DATA[1000:]])
    assert (digest.size, digest.sha256) == (len(DATA), hashlib.sha256(DATA).hexdigest())
    info = store.stat("jobs/a/checkpoints/x.pt")
    assert info is not None and info.size == len(DATA) and info.modified_at is not None
    assert store.read_range("jobs/a/checkpoints/x.pt", 10, 20) == DATA[10:20]
    assert store.read_range("jobs/a/checkpoints/x.pt", len(DATA) - 5, len(DATA) + 100) == DATA[-5:]
    assert b"".join(store.iter_range("jobs/a/checkpoints/x.pt", 0, len(DATA), chunk_bytes=4096)) == DATA
    store.write("jobs/a/log.txt", b"log")
    store.write("jobs/b/log.txt", b"other")
    assert [o.key for o in store.list("jobs/a")] == ["jobs/a/checkpoints/x.pt", "jobs/a/log.txt"]
    assert store.list("jobs/none") == []
    assert store.list(TEMP_PREFIX) == [], "a committed write leaves no temporary object"
    store.delete("jobs/a/log.txt")
    store.delete("jobs/a/log.txt")  # idempotent
    assert store.stat("jobs/a/log.txt") is None
    store.delete_prefix("jobs/a")
    assert store.list("jobs/a") == [] and store.stat("jobs/b/log.txt") is not None
    with pytest.raises(FileNotFoundError):
        store.read_range("jobs/a/checkpoints/x.pt", 0, 1)


def test_a_failed_write_commits_nothing_and_keeps_the_old_object(store: ObjectStore) -> None:
    store.write("k/obj", b"old")
    with pytest.raises(RuntimeError), store.open_write("k/obj") as writer:
        writer.write(b"partial new bytes")
        raise RuntimeError("crash mid-write")
    assert store.read_range("k/obj", 0, 100) == b"old"
    assert store.list(TEMP_PREFIX) == []


def test_put_and_get_file_keep_the_bytes(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    sent = store.put_file(src, "f/data.bin")
    got = store.get_file("f/data.bin", tmp_path / "down" / "data.bin")
    assert sent == got and (tmp_path / "down" / "data.bin").read_bytes() == DATA
    with pytest.raises(FileNotFoundError):
        store.get_file("f/missing.bin", tmp_path / "missing.bin")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "a/\x00", ".."])
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ArtifactRejected):
        store.write(key, b"x")


def test_local_store_refuses_symlinks(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    (tmp_path / "secret").write_text("s")
    (store.root / "jobs").mkdir(parents=True)
    (store.root / "jobs" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactRejected):
        store.stat("jobs/link")


def test_presigned_url_downloads_from_s3_and_is_none_on_a_directory(s3_env: str, tmp_path: Path) -> None:  # noqa: F811
    s3 = open_object_store(s3_env)
    s3.write("p/obj.bin", DATA)
    url = s3.presigned_url("p/obj.bin", expires_s=60)
    assert url is not None and httpx.get(url).content == DATA
    assert open_object_store(tmp_path).presigned_url("p/obj.bin", expires_s=60) is None


def _info(store: ArtifactStore, tmp_path: Path, name: str, data: bytes, step: int) -> CheckpointInfo:
    path = tmp_path / f"{name}-{step}.pt"
    path.write_bytes(data)
    return CheckpointInfo(name=name, phase="k_only", epoch=0, step=step, path=str(path), size=len(data),
                          sha256=hashlib.sha256(data).hexdigest())


def test_checkpoint_upload_record_fetch_and_orphan_sweep(store: ObjectStore, session: Session,
                                                         tmp_path: Path) -> None:
    artifacts = ArtifactStore(store)
    job = make_job(session, JobState.RUNNING)
    kept = artifacts.put_checkpoint(job.id, _info(artifacts, tmp_path, "mid", b"weights 1", 1))
    register_checkpoint(session, job.id, kept, lease_token=job.lease_token, store=artifacts)
    orphan = artifacts.put_checkpoint(job.id, _info(artifacts, tmp_path, "mid", b"weights 2", 2))  # never recorded
    assert orphan.path != kept.path, "a rewritten checkpoint never replaces the object a record points at"
    with pytest.raises(ArtifactRejected):  # the file changed after the trainer reported it
        artifacts.put_checkpoint(job.id, _info(artifacts, tmp_path, "x", b"abc", 3).model_copy(
            update={"sha256": "0" * 64}))
    fetched = artifacts.fetch(artifacts.job_key(job.id, kept.path), tmp_path / "resume.pt", sha256=kept.sha256)
    assert fetched.read_bytes() == b"weights 1"
    with pytest.raises(ArtifactRejected):
        artifacts.fetch(artifacts.job_key(job.id, kept.path), tmp_path / "bad.pt", sha256="f" * 64)
    transition(session, job.id, JobState.SUCCEEDED, lease_token=job.lease_token, principal=WORKER)
    store.write(f"{TEMP_PREFIX}/crashed-write", b"partial")
    store.write("jobs/no-such-job/log.txt", b"a deleted job's leftover")

    sessions = make_session_factory(session.get_bind())  # type: ignore[arg-type]
    young = sweep_orphans(artifacts, sessions, older_than_s=3600)
    assert young.removed == [], "nothing is removed within the grace period"
    later = utcnow() + timedelta(hours=2)
    swept = sweep_orphans(artifacts, sessions, older_than_s=3600, now=later)
    assert sorted(swept.removed) == sorted([
        f"{TEMP_PREFIX}/crashed-write", artifacts.job_key(job.id, orphan.path), "jobs/no-such-job/log.txt"])
    assert artifacts.stat(job.id, kept.path) is not None
