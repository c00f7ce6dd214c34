"""Edges of the HTTP contract: Range headers (RFC 9110 §14), evaluations naming what does not exist, the
upload's Location, control characters in names, non-finite and huge numbers in configs, and the report of a
cancelled job."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import JobState
from server.store import ArtifactStore
from server.store.models import JobRow
from tests.factories import make_job, tiny_config
from tests.server.routes.test_checkpoints import CONTENT, _job_with_checkpoints

PROBLEM = "application/problem+json"


@pytest.fixture
def job(api_session: Session, api_artifacts: ArtifactStore) -> JobRow:
    return _job_with_checkpoints(api_session, api_artifacts)


@pytest.mark.parametrize("value", ["bytes", "bytes 0-10", "=0-10", "bytes=abc", "bytes=-", "bytes=10-5", "oops"])
def test_a_malformed_range_is_a_400_problem(client: TestClient, job: JobRow, value: str) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"Range": value})
    assert r.status_code == 400, (value, r.status_code, r.text[:200])
    assert r.headers["content-type"] == PROBLEM and "Range" in r.json()["detail"]


@pytest.mark.parametrize("value", ["items=0-10", "pages=1", "Bits=0-1"])
def test_a_range_in_an_unknown_unit_is_ignored(client: TestClient, job: JobRow, value: str) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"Range": value})
    assert r.status_code == 200 and r.content == CONTENT
    assert "content-range" not in r.headers


def test_an_unsatisfiable_range_is_a_416_problem_with_content_range(client: TestClient, job: JobRow) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"Range": f"bytes={len(CONTENT)}-"})
    assert r.status_code == 416
    assert r.headers["content-type"] == PROBLEM and r.json()["status"] == 416
    assert r.headers["content-range"] == f"bytes */{len(CONTENT)}"


def test_a_valid_range_still_gives_206(client: TestClient, job: JobRow) -> None:
    r = client.get(f"/v1/jobs/{job.id}/checkpoints/final", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == CONTENT[10:20]


def _evaluation(source: dict[str, str]) -> dict[str, object]:
    return {"kind": "evaluation", "config": {"checkpoint": source}}


def test_an_evaluation_naming_what_does_not_exist_is_a_422_at_submit(client: TestClient, job: JobRow) -> None:
    cases = {
        "job": ({"job_id": str(uuid.uuid4())}, "not found"),
        "checkpoint": ({"job_id": job.id, "checkpoint": "nope-s1"}, "no checkpoint 'nope-s1'"),
        "upload": ({"upload_id": uuid.uuid4().hex}, "POST the file to /v1/checkpoints first"),
    }
    for what, (source, words) in cases.items():
        r = client.post("/v1/jobs", json=_evaluation(source))
        assert r.status_code == 422, (what, r.text)
        [error] = r.json()["errors"]
        assert error["field"] == "config.checkpoint" and words in error["message"], (what, error)
    assert client.get("/v1/jobs?kind=evaluation").json()["items"] == []  # no job was created


def test_the_uploads_location_resolves_and_deletes(client: TestClient) -> None:
    r = client.post("/v1/checkpoints", content=b"PK\x03\x04" + CONTENT,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201
    location = r.headers["Location"]
    got = client.get(location)
    assert got.status_code == 200 and got.json() == r.json()
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert client.delete(location).status_code == 404
    refused = client.post("/v1/jobs", json=_evaluation({"upload_id": r.json()["upload_id"]}))
    assert refused.status_code == 422


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "bell\x07", "esc\x1b[31m", "del\x7f", "c1\x85"])
def test_control_characters_in_a_name_are_refused(client: TestClient, name: str) -> None:
    r = client.post("/v1/jobs", json={"kind": "diagnostic", "preset": "quickstart", "name": name})
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "name", "message": "must not contain NUL or other control characters"}]


def test_a_name_with_ordinary_unicode_is_accepted(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"kind": "diagnostic", "preset": "quickstart", "name": "Präzision – run 1 ✓"})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_in_a_config_is_one_clear_error(client: TestClient, token: str) -> None:
    config = tiny_config()
    raw = json.dumps({"kind": "diagnostic", "config": config}).replace('"lr": ', f'"lr": {token}, "_lr": ', 1)
    raw = raw.replace(', "_lr": ' + json.dumps(config["phases"][0]["lr"]), "", 1)
    r = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [
        {"field": "config.phases.0.lr", "message": f"{token} is not a number JSON allows; give a finite number"}
    ]


def test_a_huge_number_for_an_integer_says_what_was_wrong(client: TestClient) -> None:
    for value, words in (("1e30", "too large for this integer field"), ("10" * 20, "less than or equal to")):
        raw = json.dumps({"kind": "diagnostic", "config": tiny_config()})
        raw = raw.replace('"seed": ' + str(tiny_config()["data"]["seed"]), f'"seed": {value}', 1)
        r = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        assert error["field"] == "config.data.seed" and words in error["message"], error


def test_a_cancelled_jobs_report_says_it_was_cancelled(client: TestClient, api_session: Session) -> None:
    queued = make_job(api_session, JobState.QUEUED)
    assert client.post(f"/v1/jobs/{queued.id}/cancel").json()["state"] == "CANCELLED"
    report = client.get(f"/v1/jobs/{queued.id}/report")
    assert report.status_code == 200
    assert report.json()["state"] == "CANCELLED" and "cancelled" in report.json()["cancelled"]["message"]
    assert "cancelled by request" in client.get(f"/v1/jobs/{queued.id}/report?format=md").text
    running = make_job(api_session, JobState.CANCELLED)
    assert "before it started" in client.get(f"/v1/jobs/{running.id}/report").json()["cancelled"]["message"]
