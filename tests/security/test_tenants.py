"""Tenants: each API key sees and controls only its own jobs, uploads and everything under them; another key
gets the very 404 a missing job gets; admin keys see everything; keys may be configured as sha256 digests."""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from api_schemas import JobState, MetricPoint
from server.deps import principal_of
from server.main import create_app
from server.store import ArtifactStore, append_points, list_events, register_checkpoint, set_report, transition
from server.store.artifacts import artifact_key
from server.store.principals import ADMIN, WORKER
from server.store.uploads import new_upload_id, record_upload, write_upload
from tests.factories import make_job, stored_checkpoint
from tests.server.conftest import job_queue, make_settings, redis_client  # noqa: F401  (fixtures)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ALICE_KEY = "sk-alice-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BOB_KEY = "sk-bob-11223344556677889900aabbccddeeff"
ADMIN_KEY = "sk-admin-ffeeddccbbaa00998877665544332211"
ALICE, BOB, ROOT = ({"X-API-Key": k} for k in (ALICE_KEY, BOB_KEY, ADMIN_KEY))
CONTENT = bytes(range(256)) * 4


def sha256_form(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def tenant_app(tmp_path: Path, job_queue: str, redis_client: Any) -> FastAPI:  # noqa: F811
    # Bob's key and the admin key are configured by their digests only.
    return create_app(make_settings(tmp_path, job_queue, api_keys=f"{ALICE_KEY},{sha256_form(BOB_KEY)}",
                                    admin_api_keys=sha256_form(ADMIN_KEY), rate_limit_per_s=0))


@pytest.fixture
def api(tenant_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(tenant_app, raise_server_exceptions=False) as client:
        yield client


@dataclass(frozen=True)
class World:
    done: str  # Alice's finished job: metrics, events, log, report, checkpoint, artifact
    queued: str  # Alice's QUEUED job (cancel)
    bob_job: str  # Bob's finished job
    upload: str  # Alice's upload


def _finished_job(app: FastAPI, owner_key: str) -> str:
    artifacts: ArtifactStore = app.state.artifacts
    with app.state.session_factory() as s:
        job = make_job(s, JobState.RUNNING, principal=principal_of(owner_key))
        lease = job.lease_token
        append_points(s, job.id, [MetricPoint(phase="k_only", epoch=0, step=i, key="train/loss", value=1.0 / (i + 1))
                                  for i in range(3)], lease_token=lease)
        info = stored_checkpoint(artifacts, job.id, "final", CONTENT, step=3, final=True)
        register_checkpoint(s, job.id, info, lease_token=lease, store=artifacts)
        artifacts.objects.write(artifact_key(artifacts, job.id, "report.json"), b'{"ok": true}')
        artifacts.objects.write(artifacts.log_key(job.id), b"hello\n")
        set_report(s, job.id, {"verdict": "ok"}, lease_token=lease)
        transition(s, job.id, JobState.SUCCEEDED, lease_token=lease, principal=WORKER)
        return job.id


@pytest.fixture
def world(tenant_app: FastAPI) -> World:
    artifacts: ArtifactStore = tenant_app.state.artifacts
    upload_id = new_upload_id()
    with write_upload(artifacts, upload_id) as writer:
        writer.write(b"PK\x03\x04" + CONTENT)
    record_upload(artifacts, upload_id, writer.digest(), principal=principal_of(ALICE_KEY))
    with tenant_app.state.session_factory() as s:
        queued = make_job(s, JobState.QUEUED, principal=principal_of(ALICE_KEY)).id
    return World(done=_finished_job(tenant_app, ALICE_KEY), queued=queued,
                 bob_job=_finished_job(tenant_app, BOB_KEY), upload=upload_id)


def _job_requests(job_id: str) -> list[tuple[str, str]]:
    base = f"/v1/jobs/{job_id}"
    return [
        ("GET", base), ("GET", f"{base}/events"), ("GET", f"{base}/metrics"), ("GET", f"{base}/metrics/stream"),
        ("GET", f"{base}/logs"), ("GET", f"{base}/report"), ("GET", f"{base}/report?format=md"),
        ("GET", f"{base}/checkpoints"), ("GET", f"{base}/checkpoints/final"), ("HEAD", f"{base}/checkpoints/final"),
        ("GET", f"{base}/checkpoints/latest"), ("GET", f"{base}/artifacts/report.json"),
        ("POST", f"{base}/cancel"), ("DELETE", base),
    ]


def _comparable(response: Any, ident: str) -> tuple[int, str, str]:
    return response.status_code, response.headers.get("content-type", ""), response.text.replace(ident, "<id>")


def test_another_keys_job_is_exactly_as_missing_as_a_job_that_does_not_exist(api: TestClient, world: World) -> None:
    missing = str(uuid.uuid4())
    checked = 0
    for (method, path), (_, missing_path) in zip(_job_requests(world.done), _job_requests(missing), strict=True):
        foreign = api.request(method, path, headers=BOB)
        absent = api.request(method, missing_path, headers=BOB)
        assert foreign.status_code == 404, (method, path, foreign.status_code, foreign.text)
        assert _comparable(foreign, world.done) == _comparable(absent, missing), (method, path)
        checked += 1
    assert checked == 14
    # nothing was changed by those requests: the job is still there, with its files, for its owner
    assert api.get(f"/v1/jobs/{world.done}", headers=ALICE).json()["state"] == "SUCCEEDED"
    assert api.get(f"/v1/jobs/{world.done}/checkpoints/final", headers=ALICE).content == CONTENT


def test_the_owner_reaches_every_endpoint_of_its_job(api: TestClient, world: World) -> None:
    for method, path in _job_requests(world.done):
        if method in ("POST", "DELETE"):
            continue
        response = api.request(method, path, headers=ALICE)
        assert response.status_code == 200, (method, path, response.status_code, response.text)
    assert [p["value"] for p in api.get(f"/v1/jobs/{world.done}/metrics", headers=ALICE).json()["points"]] == \
        pytest.approx([1.0, 0.5, 1.0 / 3])
    stream = api.get(f"/v1/jobs/{world.done}/metrics/stream", headers=ALICE).text
    assert stream.count("event: metric") == 3 and "SUCCEEDED" in stream


def test_listing_shows_each_key_its_own_jobs_and_the_admin_all(api: TestClient, world: World) -> None:
    def ids(headers: dict[str, str]) -> set[str]:
        return {j["id"] for j in api.get("/v1/jobs?limit=500", headers=headers).json()["items"]}

    assert ids(ALICE) == {world.done, world.queued}
    assert ids(BOB) == {world.bob_job}
    assert ids(ROOT) == {world.done, world.queued, world.bob_job}
    assert {j["id"] for j in api.get("/v1/jobs?state=QUEUED", headers=BOB).json()["items"]} == set()


def test_cancel_and_delete_of_another_keys_job_change_nothing(api: TestClient, world: World,
                                                              tenant_app: FastAPI) -> None:
    assert api.post(f"/v1/jobs/{world.queued}/cancel", headers=BOB).status_code == 404
    assert api.delete(f"/v1/jobs/{world.done}", headers=BOB).status_code == 404
    assert api.get(f"/v1/jobs/{world.queued}", headers=ALICE).json()["state"] == "QUEUED"
    assert api.get(f"/v1/jobs/{world.done}", headers=ALICE).status_code == 200
    assert api.post(f"/v1/jobs/{world.queued}/cancel", headers=ALICE).json()["state"] == "CANCELLED"
    with tenant_app.state.session_factory() as s:
        events = list_events(s, world.queued, principal=ADMIN)
    assert [(e.to_state, e.principal) for e in events] == [("QUEUED", principal_of(ALICE_KEY).id),
                                                          ("CANCELLED", principal_of(ALICE_KEY).id)]


def test_admin_key_sees_and_controls_every_job(api: TestClient, world: World, tenant_app: FastAPI) -> None:
    for method, path in _job_requests(world.bob_job):
        if method in ("POST", "DELETE"):
            continue
        assert api.request(method, path, headers=ROOT).status_code == 200, (method, path)
    assert api.post(f"/v1/jobs/{world.queued}/cancel", headers=ROOT).json()["state"] == "CANCELLED"
    with tenant_app.state.session_factory() as s:
        assert list_events(s, world.queued, principal=ADMIN)[-1].principal == principal_of(ADMIN_KEY).id
    assert api.delete(f"/v1/jobs/{world.bob_job}", headers=ROOT).status_code == 204
    assert api.get(f"/v1/jobs/{world.bob_job}", headers=BOB).status_code == 404
    artifacts = tenant_app.state.artifacts
    assert artifacts.objects.list(artifacts.job_prefix(world.bob_job)) == []


def test_uploads_belong_to_the_key_that_posted_them(api: TestClient, world: World) -> None:
    missing = uuid.uuid4().hex
    for method in ("GET", "DELETE"):
        foreign = api.request(method, f"/v1/checkpoints/{world.upload}", headers=BOB)
        absent = api.request(method, f"/v1/checkpoints/{missing}", headers=BOB)
        assert foreign.status_code == 404
        assert _comparable(foreign, world.upload) == _comparable(absent, missing)
    assert api.get(f"/v1/checkpoints/{world.upload}", headers=ALICE).json()["size"] == len(CONTENT) + 4
    assert api.get(f"/v1/checkpoints/{world.upload}", headers=ROOT).status_code == 200


def test_an_evaluation_cannot_name_another_keys_job_or_upload(api: TestClient, world: World) -> None:
    sources = [{"job_id": world.done, "checkpoint": "final"}, {"upload_id": world.upload}]
    for source in sources:
        body = {"kind": "evaluation", "config": {"checkpoint": source}}
        response = api.post("/v1/jobs", headers=BOB, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "config.checkpoint"
        assert world.done not in json.dumps(api.get("/v1/jobs", headers=BOB).json())


def test_idempotency_keys_are_per_key(api: TestClient, world: World) -> None:
    body = {"kind": "diagnostic", "preset": "quickstart"}
    first = api.post("/v1/jobs", headers={**ALICE, "Idempotency-Key": "same"}, json=body)
    second = api.post("/v1/jobs", headers={**BOB, "Idempotency-Key": "same"}, json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert "Idempotent-Replayed" not in second.headers


def test_a_key_configured_as_its_sha256_has_the_same_principal_as_in_plain_text(
    tmp_path: Path, job_queue: str, api: TestClient, world: World  # noqa: F811
) -> None:
    assert api.get(f"/v1/jobs/{world.bob_job}", headers=BOB).status_code == 200
    assert api.get("/v1/jobs", headers={"X-API-Key": sha256_form(BOB_KEY)}).status_code == 401  # the digest is no key
    assert api.get("/v1/jobs", headers={"X-API-Key": hashlib.sha256(BOB_KEY.encode()).hexdigest()}).status_code == 401
    plain = create_app(make_settings(tmp_path, job_queue, api_keys=BOB_KEY, rate_limit_per_s=0))
    with TestClient(plain) as client:
        assert client.get(f"/v1/jobs/{world.bob_job}", headers=BOB).status_code == 200  # same database, same owner


@pytest.mark.parametrize("bad", ["sha256:abc", "sha256:" + "g" * 64, "sha256:" + "a" * 63])
def test_malformed_sha256_keys_fail_at_startup(bad: str) -> None:
    from server.settings import Settings

    with pytest.raises(ValueError, match="64 hex digits"):
        Settings(api_keys=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="64 hex digits"):
        Settings(admin_api_keys=bad)  # type: ignore[arg-type]


def test_auth_off_is_one_anonymous_principal_that_sees_its_jobs(tmp_path: Path, job_queue: str) -> None:  # noqa: F811
    app = create_app(make_settings(tmp_path, job_queue))
    with TestClient(app) as client:
        job = client.post("/v1/jobs", json={"kind": "diagnostic", "preset": "quickstart"}).json()
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [job["id"]]
        with app.state.session_factory() as s:
            assert [e.principal for e in list_events(s, job["id"], principal=ADMIN)] == ["anonymous"]
