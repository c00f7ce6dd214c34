"""The diagnostic's verdict through the real stack: HTTP → Celery worker → trainer + checks → store →
GET /v1/jobs/{id}/report as JSON and as Markdown, for a finished run and for one aborted by non-finite steps."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api_schemas import DiagnosticReport
from tests.integration.conftest import diagnostic, is_terminal, poll, submit
from tests.worker.configs import quick_diagnostic_config

pytestmark = pytest.mark.integration

#: The checks table of DiagnosticReport.to_markdown().
TABLE_HEADER = "| # | check | status | summary |"


def test_diagnostic_report_has_ten_checks_and_a_verdict_as_json_and_markdown(client: TestClient) -> None:
    job_id, _ = submit(client, diagnostic(quick_diagnostic_config()))
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "SUCCEEDED", body.get("failure")

    response = client.get(f"/v1/jobs/{job_id}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    report = DiagnosticReport.model_validate(response.json())
    assert [c.id for c in report.checks] == list(range(1, 11))
    assert report.verdict.decision
    assert {"training", "checks", "check_1", "check_10"} <= set(report.timing_s)

    md = client.get(f"/v1/jobs/{job_id}/report", params={"format": "md"})
    assert md.status_code == 200
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("# Diagnostic report")
    assert f"**Verdict: {report.verdict.status}**" in md.text
    assert TABLE_HEADER in md.text
    for c in report.checks:
        assert f"| {c.id} | {c.name} | {c.status} |" in md.text


def test_diagnostic_aborted_by_nan_fails_nonfinite_abort_and_still_reports_check_1(client: TestClient) -> None:
    config = quick_diagnostic_config(nan_loss_term="k", nan_from_step=0, nan_n_steps=0)  # NaN in `k` forever
    config["phases"][0]["max_consecutive_nonfinite"] = 3
    job_id, _ = submit(client, diagnostic(config))
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "FAILED"
    assert body["failure"]["reason"] == "NONFINITE_ABORT"

    response = client.get(f"/v1/jobs/{job_id}/report")
    assert response.status_code == 200
    report = DiagnosticReport.model_validate(response.json())
    nonfinite = next(c for c in report.checks if c.id == 1)
    assert nonfinite.status == "FAIL"
    assert "loss terms involved: k" in nonfinite.summary
    assert nonfinite.evidence["by_loss_term"] == {"k": 3}
    assert nonfinite.evidence["by_cause"] == {"loss": 3}
    assert report.verdict.status == "FAIL"
    assert report.verdict.decision.startswith("fix non-finite steps first")

    md = client.get(f"/v1/jobs/{job_id}/report", params={"format": "md"}).text
    assert "| 1 | non-finite steps | FAIL |" in md
