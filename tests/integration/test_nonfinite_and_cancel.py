"""Non-finite steps seen while a job runs, and cooperative cancel, through the real stack."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import diagnostic, is_terminal, poll, submit
from tests.worker.configs import quick_diagnostic_config

pytestmark = pytest.mark.integration


def _slow_config(*, sleep_per_step_s: float = 0.05, n_train: int = 1024, **debug: Any) -> dict[str, Any]:
    config = quick_diagnostic_config()
    config["data"]["n_train"] = n_train
    config["debug"] = {"sleep_per_step_s": sleep_per_step_s, **debug}
    return config


def test_endless_nan_is_counted_by_cause_while_running_then_aborts(client: TestClient) -> None:
    config = _slow_config(sleep_per_step_s=0.1, nan_loss_term="k", nan_from_step=2)
    config["phases"][0]["max_consecutive_nonfinite"] = 15
    job_id, _ = submit(client, diagnostic(config))
    url = f"/v1/jobs/{job_id}"
    running = poll(client, url, lambda b: b["state"] != "QUEUED" and b["nonfinite_steps"]["total"] >= 2)
    assert running["state"] == "RUNNING", "skipped steps must be visible while the job runs"
    summary = running["nonfinite_steps"]
    assert summary["by_cause"].get("loss", 0) == summary["total"]
    assert summary["by_loss_term"].get("k", 0) >= 2
    assert summary["last"]["cause"] == "loss"
    assert "k" in summary["last"]["loss_terms"]
    final = poll(client, url, is_terminal)
    assert final["state"] == "FAILED"
    assert final["failure"]["reason"] == "NONFINITE_ABORT"
    assert final["nonfinite_steps"]["total"] >= 15


def test_cancel_queued_then_running_job(client: TestClient) -> None:
    # The one worker takes the first (slow) job; the second waits QUEUED behind it.
    running_id, _ = submit(client, diagnostic(_slow_config(n_train=4096)))
    queued_id, _ = submit(client, diagnostic(quick_diagnostic_config()))
    poll(client, f"/v1/jobs/{running_id}", lambda b: b["state"] == "RUNNING" and b["progress"]["step"] >= 1)
    assert client.get(f"/v1/jobs/{queued_id}").json()["state"] == "QUEUED"

    # cancel while QUEUED: CANCELLED at once
    response = client.post(f"/v1/jobs/{queued_id}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "CANCELLED"

    # cancel while RUNNING: CANCELLING, then CANCELLED once the trainer stops at a step boundary
    response = client.post(f"/v1/jobs/{running_id}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] in ("CANCELLING", "CANCELLED")
    final = poll(client, f"/v1/jobs/{running_id}", is_terminal)
    assert final["state"] == "CANCELLED"

    # the queued job's message reaches the worker afterwards and is dropped by the claim
    after = client.get(f"/v1/jobs/{queued_id}").json()
    assert after["state"] == "CANCELLED"
    assert after["started_at"] is None


def test_cancel_finished_job_returns_409(client: TestClient) -> None:
    job_id, _ = submit(client, diagnostic(quick_diagnostic_config()))
    poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
