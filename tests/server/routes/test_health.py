"""Health, readiness, Prometheus metrics and API-key authentication."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import JobState
from server.main import create_app
from tests.factories import make_job, tiny_config
from tests.server.conftest import REDIS_DOWN_URL, make_settings


def test_healthz_is_200(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_when_database_and_redis_answer(client: TestClient) -> None:
    r = client.get("/readyz")
    assert (r.status_code, r.json()["checks"]) == (200, {"database": "ok", "redis": "ok"})


def test_readyz_is_503_naming_redis_when_redis_is_down(tmp_path: Path, job_queue: str) -> None:
    with TestClient(create_app(make_settings(tmp_path, job_queue, redis_url=REDIS_DOWN_URL))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert "redis" in r.json()["detail"] and r.json()["checks"]["database"] == "ok"
        assert client.get("/healthz").status_code == 200


def test_prometheus_metrics_count_jobs_queue_and_nonfinite(client: TestClient, api_session: Session) -> None:
    make_job(api_session, JobState.RUNNING)
    client.post("/v1/jobs", json={"kind": "diagnostic", "config": tiny_config()})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert 'ris_jobs_jobs{state="RUNNING"} 1.0' in lines
    assert 'ris_jobs_jobs{state="QUEUED"} 1.0' in lines
    assert "ris_jobs_nonfinite_steps 0.0" in lines
    assert any(line.startswith("ris_jobs_queue_depth{") for line in lines)


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert (r.status_code, r.headers["content-type"]) == (404, "application/problem+json")


def _auth_client(tmp_path: Path, job_queue: str) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path, job_queue, api_keys="alpha,beta")))


def test_with_keys_configured_requests_without_key_get_401(tmp_path: Path, job_queue: str) -> None:
    with _auth_client(tmp_path, job_queue) as client:
        for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("GET", "/metrics"),
                             ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x/checkpoints/final")]:
            r = client.request(method, path)
            assert r.status_code == 401, (method, path)
            assert r.headers["content-type"] == "application/problem+json"


def test_with_keys_configured_wrong_key_gets_401_and_valid_key_passes(tmp_path: Path, job_queue: str) -> None:
    with _auth_client(tmp_path, job_queue) as client:
        assert client.get("/v1/jobs", headers={"X-API-Key": "gamma"}).status_code == 401
        assert client.get("/v1/jobs", headers={"X-API-Key": "beta"}).status_code == 200


def test_with_keys_configured_health_endpoints_stay_open(tmp_path: Path, job_queue: str) -> None:
    with _auth_client(tmp_path, job_queue) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_jobs_of_one_key_are_bounded_separately(tmp_path: Path, job_queue: str) -> None:
    app = create_app(make_settings(tmp_path, job_queue, api_keys="alpha,beta", max_queued_jobs_per_key=1))
    body = {"kind": "diagnostic", "config": tiny_config()}
    with TestClient(app) as client:
        assert client.post("/v1/jobs", json=body, headers={"X-API-Key": "alpha"}).status_code == 202
        assert client.post("/v1/jobs", json=body, headers={"X-API-Key": "alpha"}).status_code == 429
        assert client.post("/v1/jobs", json=body, headers={"X-API-Key": "beta"}).status_code == 202
