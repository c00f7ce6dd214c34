"""POST /v1/checkpoints: raw-body uploads, stored atomically with their sha256, bounded in size."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from server.main import create_app
from server.settings import Settings
from server.store import ArtifactStore
from server.store.principals import ADMIN
from server.store.uploads import read_upload, upload_object
from tests.server.conftest import make_settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

OCTET = {"content-type": "application/octet-stream"}
#: The first bytes of a zip archive (what torch.save writes), then filler.
ZIP_BODY = b"PK\x03\x04" + bytes(range(256)) * 8


@pytest.fixture
def small_limit_client(tmp_path: Path, job_queue: str) -> Iterator[TestClient]:
    settings: Settings = make_settings(tmp_path, job_queue, max_upload_bytes=4096)
    app: FastAPI = create_app(settings)
    with TestClient(app) as c:
        yield c


def test_upload_stores_the_file_with_its_sha256(client: TestClient, api_artifacts: ArtifactStore) -> None:
    r = client.post("/v1/checkpoints", content=ZIP_BODY, headers=OCTET)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(ZIP_BODY).hexdigest() and body["size"] == len(ZIP_BODY)
    assert r.headers["location"] == f"/v1/checkpoints/{body['upload_id']}"
    key, record = upload_object(api_artifacts, body["upload_id"], principal=ADMIN)
    assert api_artifacts.objects.read_range(key, 0, record.size) == ZIP_BODY
    assert read_upload(api_artifacts, body["upload_id"], principal=ADMIN).sha256 == body["sha256"]


def test_upload_over_the_limit_is_413_and_leaves_nothing(small_limit_client: TestClient, tmp_path: Path) -> None:
    r = small_limit_client.post("/v1/checkpoints", content=ZIP_BODY * 4, headers=OCTET)
    assert r.status_code == 413
    for prefix in ("uploads", "_tmp"):
        leftover = tmp_path / "artifacts" / prefix
        assert not leftover.exists() or list(leftover.iterdir()) == []


def test_streamed_upload_over_the_limit_is_413_and_leaves_nothing(
        small_limit_client: TestClient, tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield ZIP_BODY
        yield ZIP_BODY
        yield ZIP_BODY

    r = small_limit_client.post("/v1/checkpoints", content=chunks(), headers=OCTET)  # chunked: no length
    assert r.status_code == 413
    for prefix in ("uploads", "_tmp"):
        leftover = tmp_path / "artifacts" / prefix
        assert not leftover.exists() or list(leftover.iterdir()) == []


def test_upload_that_is_not_a_zip_is_422(client: TestClient) -> None:
    r = client.post("/v1/checkpoints", content=b"\x80\x04\x95 raw pickle", headers=OCTET)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"


def test_upload_as_multipart_or_json_is_415(client: TestClient) -> None:
    assert client.post("/v1/checkpoints", files={"file": ("a.pt", ZIP_BODY)}).status_code == 415
    assert client.post("/v1/checkpoints", json={"a": 1}).status_code == 415


def test_json_routes_keep_their_own_body_limit(small_limit_client: TestClient) -> None:
    r = small_limit_client.post("/v1/jobs", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413
