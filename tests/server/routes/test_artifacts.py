"""GET /v1/jobs/{id}/artifacts/{name}: a job's output files, with checkpoint-grade path safety."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api_schemas import JobKind, JobState
from server.store import ArtifactStore
from server.store.artifacts import artifact_key
from server.store.objects import LocalObjectStore
from tests.factories import make_job

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 32


def _job_with_plot(session: Session, artifacts: ArtifactStore) -> str:
    job = make_job(session, JobState.SUCCEEDED, kind=JobKind.EVALUATION)
    artifacts.objects.write(artifact_key(artifacts, job.id, "k_acc_vs_snr.png"), PNG)
    return job.id


def test_download_artifact_returns_the_png(client: TestClient, api_session: Session,
                                           api_artifacts: ArtifactStore) -> None:
    job_id = _job_with_plot(api_session, api_artifacts)
    r = client.get(f"/v1/jobs/{job_id}/artifacts/k_acc_vs_snr.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png" and r.content == PNG


def test_download_artifact_of_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/artifacts/k_acc_vs_snr.png").status_code == 404


@pytest.mark.parametrize("name", ["missing.png", "log.txt", "%2e%2e%2flog.txt", "a.png.exe", "-x.png"])
def test_download_artifact_with_bad_or_unknown_name_is_404(
        client: TestClient, api_session: Session, api_artifacts: ArtifactStore, name: str) -> None:
    job_id = _job_with_plot(api_session, api_artifacts)
    assert client.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code == 404


def test_download_artifact_through_a_symlink_is_404(
        client: TestClient, api_session: Session, api_artifacts: ArtifactStore, tmp_path: Path) -> None:
    job_id = _job_with_plot(api_session, api_artifacts)
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    assert isinstance(api_artifacts.objects, LocalObjectStore)
    link = api_artifacts.objects.path(artifact_key(api_artifacts, job_id, "leak.png"))
    link.symlink_to(secret)
    assert client.get(f"/v1/jobs/{job_id}/artifacts/leak.png").status_code == 404
