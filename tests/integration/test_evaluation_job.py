"""Evaluation jobs through the real stack: train a tiny job through the API, evaluate its final
checkpoint, read the report and download the plots; upload checkpoints, a malicious one included."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_schemas import TrainingJobConfig
from tests.factories import malicious_checkpoint_bytes, tiny_config
from tests.integration.conftest import is_terminal, poll, submit

pytestmark = pytest.mark.integration

#: Small enough for a few seconds on a CPU: 16 scenes, SOMP on a 6 × 3 × 2 grid.
TINY_EVALUATION = {"n_scenes": 16, "somp_grid": {"n_azimuth": 6, "n_elevation": 3, "n_range": 2}}
OCTET = {"content-type": "application/octet-stream"}


def evaluation(checkpoint: dict[str, str], **config: Any) -> dict[str, Any]:
    return {"kind": "evaluation", "name": "integration-eval",
            "config": {**TINY_EVALUATION, **config, "checkpoint": checkpoint}}


@pytest.fixture(scope="module")
def trained_job(client: TestClient) -> str:
    """A one-phase tiny training job run to SUCCEEDED; returns its id."""
    config = {k: v for k, v in tiny_config().items() if k in TrainingJobConfig.model_fields}
    job_id, _ = submit(client, {"kind": "training", "name": "to-evaluate", "config": config})
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "SUCCEEDED", body.get("failure")
    return job_id


@pytest.fixture(scope="module")
def finished_evaluation(client: TestClient, trained_job: str) -> dict[str, Any]:
    job_id, _ = submit(client, evaluation({"job_id": trained_job, "checkpoint": "final"}))
    return poll(client, f"/v1/jobs/{job_id}", is_terminal)


def test_evaluation_of_a_trained_job_succeeds(finished_evaluation: dict[str, Any]) -> None:
    assert finished_evaluation["state"] == "SUCCEEDED", finished_evaluation.get("failure")
    assert finished_evaluation["kind"] == "evaluation"
    assert finished_evaluation["progress"]["fraction"] == pytest.approx(1.0)


def test_report_has_every_table(client: TestClient, finished_evaluation: dict[str, Any]) -> None:
    report = client.get(f"/v1/jobs/{finished_evaluation['id']}/report").json()
    assert report["kind"] == "evaluation"
    assert report["methods"] == ["model", "model_raw", "somp", "mdl_measurement", "aic_measurement", "mdl_oracle",
                                 "aic_oracle"]
    assert [t["label"] for t in report["by_snr"]][-1] == "all"
    assert report["by_snr"][-1]["n_scenes"] == 16
    assert len(report["by_k"]) == 2 and len(report["by_range"]) == 3  # tiny_config's K_MAX = 2
    assert sum(map(sum, report["k_confusion"]["counts"])) == 16
    assert report["checkpoint"]["path"] == "final.pt"  # never the worker's filesystem layout


def test_report_renders_as_markdown(client: TestClient, finished_evaluation: dict[str, Any]) -> None:
    r = client.get(f"/v1/jobs/{finished_evaluation['id']}/report", params={"format": "md"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    for heading in ("# Evaluation report", "## By SNR", "## K confusion matrix", "k_acc_vs_snr.png"):
        assert heading in r.text


def test_png_artifacts_download_with_the_reported_sha256(
        client: TestClient, finished_evaluation: dict[str, Any]) -> None:
    report = client.get(f"/v1/jobs/{finished_evaluation['id']}/report").json()
    files = {a["name"]: a for a in report["artifacts"]}
    assert {"k_acc_vs_snr.png", "rmse_vs_snr.png", "k_confusion.png", "report.md", "report.json"} <= set(files)
    for name in ("k_acc_vs_snr.png", "rmse_vs_snr.png", "k_confusion.png"):
        r = client.get(files[name]["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG")
        assert hashlib.sha256(r.content).hexdigest() == files[name]["sha256"]


@pytest.mark.parametrize("name", ["nope.png", "..%2Flog.txt", "log.txt", ".hidden.png", "report.exe"])
def test_unknown_or_unsafe_artifact_names_are_404(
        client: TestClient, finished_evaluation: dict[str, Any], name: str) -> None:
    r = client.get(f"/v1/jobs/{finished_evaluation['id']}/artifacts/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_evaluation_of_a_missing_job_is_refused_at_submit(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"kind": "evaluation", "config": {"checkpoint": {"job_id": "no-such-job"}}})
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "config.checkpoint", "message": "job no-such-job not found"}]


def test_uploaded_checkpoint_is_evaluated(client: TestClient, trained_job: str) -> None:
    data = client.get(f"/v1/jobs/{trained_job}/checkpoints/final").content
    r = client.post("/v1/checkpoints", content=data, headers=OCTET)
    assert r.status_code == 201, r.text
    upload = r.json()
    assert upload["size"] == len(data) and upload["sha256"] == hashlib.sha256(data).hexdigest()
    job_id, _ = submit(client, evaluation({"upload_id": upload["upload_id"]}, baselines=["mdl_measurement"],
                                          crb=False))
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "SUCCEEDED", body.get("failure")


def test_malicious_uploaded_checkpoint_fails_user_config_without_running_the_payload(
        client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    r = client.post("/v1/checkpoints", content=malicious_checkpoint_bytes(marker), headers=OCTET)
    assert r.status_code == 201, r.text  # the API stores bytes; it never unpickles them
    job_id, _ = submit(client, evaluation({"upload_id": r.json()["upload_id"]}, baselines=[], crb=False))
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "FAILED"
    assert body["failure"]["reason"] == "USER_CONFIG"
    assert "rejected" in body["failure"]["message"] and "refused global exec" in body["failure"]["message"]
    assert "/" not in body["failure"]["message"].replace("weights-only", "")  # no server path
    assert not marker.exists(), "the pickle payload was executed"


def test_upload_that_is_not_a_torch_zip_is_422(client: TestClient) -> None:
    r = client.post("/v1/checkpoints", content=b"\x80\x04 a raw pickle", headers=OCTET)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body"


def test_upload_with_a_json_content_type_is_415(client: TestClient) -> None:
    r = client.post("/v1/checkpoints", json={"file": "x"})
    assert r.status_code == 415
