"""Checkpoint routes: listing, download with ETag/304/Range/HEAD, aliases, and refused names and paths."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import CheckpointInfo, JobState
from server.store import ArtifactStore, register_checkpoint, write_atomic
from server.store.models import JobRow
from tests.factories import make_job

CONTENT = bytes(range(256)) * 4  # 1024 bytes


def _job_with_checkpoints(session: Session, artifacts: ArtifactStore) -> JobRow:
    job = make_job(session, JobState.RUNNING)
    for name, step, final in (("k_only-s10", 10, False), ("final", 20, True)):
        path = artifacts.checkpoint_dir(job.id) / f"{name}.pt"
        data = CONTENT if final else b"early"
        digest = write_atomic(path, data)
        info = CheckpointInfo(name=name, phase="k_only", epoch=0, step=step, path=str(path), size=digest.size,
                              sha256=digest.sha256, is_final=final)
        register_checkpoint(session, job.id, info, lease_token=job.lease_token, store=artifacts)
    return job


@pytest.fixture
def job(api_session: Session, api_artifacts: ArtifactStore) -> JobRow:
    return _job_with_checkpoints(api_session, api_artifacts)


def test_read_checkpoints_lists_them_by_step(client: TestClient, job: JobRow) -> None:
    items = client.get(f"/v1/jobs/{job.id}/checkpoints").json()
    assert [(c["name"], c["step"], c["size"]) for c in items] == [("k_only-s10", 10, 5), ("final", 20, 1024)]
    assert items[1]["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert items[1]["url"] == f"/v1/jobs/{job.id}/checkpoints/final"


def test_download_final_checkpoint_with_etag_and_filename(client: TestClient, job: JobRow) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final")
    assert r.status_code == 200
    assert r.content == CONTENT
    assert r.headers["etag"] == f'"{hashlib.sha256(CONTENT).hexdigest()}"'
    assert r.headers["content-disposition"] == f'attachment; filename="{job.id}-final.pt"'


def test_download_latest_alias_is_highest_step(client: TestClient, job: JobRow) -> None:
    assert client.get(f"/v1/jobs/{job.id}/checkpoints/latest").content == CONTENT


def test_download_with_matching_if_none_match_returns_304(client: TestClient, job: JobRow) -> None:
    etag = client.get(f"/v1/jobs/{job.id}/checkpoints/final").headers["etag"]
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"If-None-Match": etag})
    assert (r.status_code, r.content) == (304, b"")


def test_download_range_returns_206(client: TestClient, job: JobRow) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206
    assert r.content == CONTENT[:100]
    assert r.headers["content-range"] == "bytes 0-99/1024"


def test_download_unsatisfiable_range_returns_416(client: TestClient, job: JobRow) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"Range": "bytes=5000-6000"})
    assert r.status_code == 416


def test_head_checkpoint_returns_headers_only(client: TestClient, job: JobRow) -> None:
    r = client.head(f"/v1/jobs/{job.id}/checkpoints/final")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "1024")


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2e%2e", ".hidden", "missing"],
)
def test_download_bad_or_unknown_name_returns_404(client: TestClient, job: JobRow, name: str) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_download_checkpoint_replaced_by_symlink_returns_404(
    client: TestClient, job: JobRow, api_artifacts: ArtifactStore, tmp_path: object
) -> None:
    path = api_artifacts.checkpoint_dir(job.id) / "final.pt"
    path.unlink()
    path.symlink_to("/etc/passwd")
    assert client.get(f"/v1/jobs/{job.id}/checkpoints/final").status_code == 404


def test_read_checkpoints_unknown_job_returns_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/checkpoints").status_code == 404
