"""Checkpoint routes: listing, download with ETag/304/Range/HEAD, aliases, and refused names and paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import JobState
from server.main import create_app
from server.store import ArtifactStore, get_checkpoint, register_checkpoint
from server.store.models import JobRow
from server.store.objects import LocalObjectStore
from server.store.principals import ADMIN
from tests.factories import make_job, stored_checkpoint
from tests.s3 import moto_server, s3_env  # noqa: F401  (fixtures)
from tests.server.conftest import make_settings

CONTENT = bytes(range(256)) * 4  # 1024 bytes


def _job_with_checkpoints(session: Session, artifacts: ArtifactStore) -> JobRow:
    job = make_job(session, JobState.RUNNING)
    for name, step, final in (("k_only-s10", 10, False), ("final", 20, True)):
        info = stored_checkpoint(artifacts, job.id, name, CONTENT if final else b"early", step=step, final=final)
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
    client: TestClient, job: JobRow, api_session: Session, api_artifacts: ArtifactStore
) -> None:
    assert isinstance(api_artifacts.objects, LocalObjectStore)
    key = api_artifacts.job_key(job.id, get_checkpoint(api_session, job.id, "final", principal=ADMIN).path)
    path = api_artifacts.objects.path(key)
    path.unlink()
    path.symlink_to("/etc/passwd")
    assert client.get(f"/v1/jobs/{job.id}/checkpoints/final").status_code == 404


def test_download_streams_from_s3_with_range_etag_and_presigned_redirect(
    tmp_path: Path, job_queue: str, s3_env: str  # noqa: F811
) -> None:
    for redirect in (False, True):
        settings = make_settings(tmp_path / str(redirect), job_queue, artifact_url=s3_env,
                                 artifact_presigned_redirect=redirect)
        with TestClient(create_app(settings)) as c:
            job = _job_with_checkpoints(c.app.state.session_factory(), c.app.state.artifacts)  # type: ignore[attr-defined]
            url = f"/v1/jobs/{job.id}/checkpoints/final"
            r = c.get(url, follow_redirects=False)
            if redirect:
                assert r.status_code == 307 and r.headers["etag"] == f'"{hashlib.sha256(CONTENT).hexdigest()}"'
                assert httpx.get(r.headers["location"]).content == CONTENT
                continue
            assert (r.status_code, r.content) == (200, CONTENT)
            part = c.get(url, headers={"Range": "bytes=-24"})
            assert (part.status_code, part.content, part.headers["content-range"]) == (206, CONTENT[-24:],
                                                                                        "bytes 1000-1023/1024")
            assert c.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
            assert c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'}).content == CONTENT


def test_read_checkpoints_unknown_job_returns_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/checkpoints").status_code == 404
