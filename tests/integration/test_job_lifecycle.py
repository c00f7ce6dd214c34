"""A job through the real stack: HTTP API → Redis → Celery worker → trainer → SQL/Redis → HTTP
(ARCHITECTURE.md, "The life of a job")."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api_schemas.metrics import VAL_K_ACC
from tests.checkpoints import assert_training_checkpoint
from tests.integration.conftest import all_points, diagnostic, is_terminal, poll, submit
from tests.worker.configs import quick_diagnostic_config, two_phase_training_config

pytestmark = pytest.mark.integration


def _sse_events(client: TestClient, job_id: str) -> list[dict[str, str]]:
    """Read the SSE stream to its end; each event as its fields (event, id, data)."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/metrics/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            current[field] = current.get(field, "") + value.removeprefix(" ")
    if current:
        events.append(current)
    return events


@pytest.fixture(scope="module")
def finished_diagnostic(client: TestClient) -> dict[str, Any]:
    """One tiny diagnostic run to completion; several tests read it."""
    job_id, response = submit(client, diagnostic(quick_diagnostic_config()))
    assert response.headers["location"].endswith(f"/v1/jobs/{job_id}")
    return poll(client, f"/v1/jobs/{job_id}", is_terminal)


def test_post_diagnostic_returns_202_with_location(client: TestClient) -> None:
    job_id, response = submit(client, diagnostic(quick_diagnostic_config()))
    assert response.json()["state"] in ("QUEUED", "RUNNING")  # the API re-reads the row after enqueueing
    assert response.headers["location"].endswith(f"/v1/jobs/{job_id}")
    poll(client, f"/v1/jobs/{job_id}", is_terminal)


def test_diagnostic_job_succeeds(finished_diagnostic: dict[str, Any]) -> None:
    assert finished_diagnostic["state"] == "SUCCEEDED", finished_diagnostic.get("failure")
    assert finished_diagnostic["attempt"] == 1
    assert finished_diagnostic["progress"]["fraction"] == pytest.approx(1.0)


def test_metric_history_has_per_epoch_k_acc_and_nonfinite_counter(
    client: TestClient, finished_diagnostic: dict[str, Any]
) -> None:
    points = all_points(client, finished_diagnostic["id"])
    seqs = [p["seq"] for p in points]
    assert seqs == sorted(set(seqs)), "seqs are unique and increasing"
    k_acc = [p for p in points if p["key"] == VAL_K_ACC]
    assert len(k_acc) == 1  # one epoch
    # a share of the val scenes, and the value the job reports as its latest
    n_val = quick_diagnostic_config()["data"]["n_val"]
    assert k_acc[0]["value"] * n_val == pytest.approx(round(k_acc[0]["value"] * n_val), abs=1e-6)
    assert finished_diagnostic["latest_metrics"][VAL_K_ACC] == k_acc[0]["value"]
    assert [p["value"] for p in points if p["key"] == "train/nonfinite_skipped"] == [0.0]
    assert finished_diagnostic["nonfinite_steps"]["total"] == 0


def test_final_checkpoint_downloads_with_matching_sha256_and_loads(
    client: TestClient, finished_diagnostic: dict[str, Any]
) -> None:
    job_id = finished_diagnostic["id"]
    listing = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    listing = listing if isinstance(listing, list) else listing["items"]
    final = client.get(f"/v1/jobs/{job_id}/checkpoints/final")
    assert final.status_code == 200
    digest = hashlib.sha256(final.content).hexdigest()
    assert digest in {c["sha256"] for c in listing}
    state = torch.load(io.BytesIO(final.content), weights_only=True)
    assert_training_checkpoint(state, kind="diagnostic", phase="k_only")
    assert state["config"]["data"] == quick_diagnostic_config()["data"]


def test_sse_stream_replays_metrics_and_closes_after_terminal_state(
    client: TestClient, finished_diagnostic: dict[str, Any]
) -> None:
    events = _sse_events(client, finished_diagnostic["id"])
    metric_ids = [int(e["id"]) for e in events if e.get("event", "metric") == "metric" and "id" in e]
    assert metric_ids, f"no metric events in {events[:3]}"
    assert metric_ids == sorted(metric_ids)
    keys = {json.loads(e["data"]).get("key") for e in events if e.get("event", "metric") == "metric"}
    assert VAL_K_ACC in keys
    assert "SUCCEEDED" in events[-1]["data"]


def test_training_job_with_two_phases_shows_both_in_metrics_and_checkpoints(client: TestClient) -> None:
    job_id, _ = submit(client, {"kind": "training", "config": two_phase_training_config()})
    body = poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert body["state"] == "SUCCEEDED", body.get("failure")
    phases_in_metrics = {p["phase"] for p in all_points(client, job_id) if p["key"] == VAL_K_ACC}
    assert phases_in_metrics == {"geom", "k_only"}
    listing = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    listing = listing if isinstance(listing, list) else listing["items"]
    assert {"geom", "k_only"} <= {c["phase"] for c in listing}


def test_delete_terminal_job_returns_204_then_404(client: TestClient) -> None:
    job_id, _ = submit(client, diagnostic(quick_diagnostic_config()))
    poll(client, f"/v1/jobs/{job_id}", is_terminal)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
