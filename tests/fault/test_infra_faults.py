"""Infrastructure faults: Redis restarted without persistence mid-job, and the API process
killed and restarted mid-job — with a real uvicorn API, real prefork workers and the real reaper."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from api_schemas import JobState
from tests.fault.conftest import Api, Service, acknowledged, audit, slow_training_config, wait_for

pytestmark = pytest.mark.fault


def _readyz(api: Api) -> int:
    try:
        return httpx.get(f"{api.base_url}/readyz", timeout=5.0).status_code
    except httpx.HTTPError:
        return 0


def _post_job(api: Api, config: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{api.base_url}/v1/jobs", json={"kind": "training", "config": config}, headers=headers,
                      timeout=10.0)


def test_redis_restart_mid_job_loses_no_job(service: Service, evidence: Any) -> None:
    api = service.start_api()
    service.start_reaper()
    service.start_worker("w1")
    running = _post_job(api, slow_training_config(epochs=8)).json()["id"]
    wait_for("a checkpoint", lambda: acknowledged(service, running).checkpoints)
    queued = _post_job(api, slow_training_config(epochs=1)).json()["id"]  # waits in Redis behind `running`
    assert service.job(queued).state == JobState.QUEUED

    service.redis.shutdown_nosave()  # the queued message, the cancel flags and pub/sub are gone
    down_at = time.monotonic()
    wait_for("/readyz 503 while Redis is down", lambda: _readyz(api) == 503, deadline_s=15)
    during = _post_job(api, slow_training_config(epochs=1))  # the broker is down: committed, not sent
    assert during.status_code == 503 and during.headers["Location"].startswith("/v1/jobs/")
    undispatched = during.json()["job_id"]
    time.sleep(1.0)
    service.redis.start()
    wait_for("/readyz 200 after Redis is back", lambda: _readyz(api) == 200, deadline_s=30)
    ready_s = time.monotonic() - down_at

    finals = {job_id: service.wait_terminal(job_id, deadline_s=150) for job_id in (running, queued, undispatched)}
    assert {j.state for j in finals.values()} == {JobState.SUCCEEDED}, {k: v.failure_message for k, v in
                                                                         finals.items()}
    recovered_s = time.monotonic() - down_at
    losses = audit(service, running)
    for job_id in (queued, undispatched):
        losses.add(audit(service, job_id))
    losses.assert_none()
    evidence("Redis restart (shutdown nosave) with 1 running + 1 queued + 1 submitted while down", 1, losses,
             [ready_s, recovered_s])


def test_api_restart_mid_job_loses_nothing(service: Service, evidence: Any) -> None:
    api = service.start_api()
    service.start_reaper()
    service.start_worker("w1")
    first = _post_job(api, slow_training_config(epochs=6), **{"Idempotency-Key": "restart-1"})
    assert first.status_code == 202
    job_id = first.json()["id"]
    wait_for("a checkpoint", lambda: acknowledged(service, job_id).checkpoints)
    with api.client() as c:
        seen_points = c.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 10_000}).json()["points"]
        seen_ckpts = {x["name"] for x in c.get(f"/v1/jobs/{job_id}/checkpoints").json()}
    before = acknowledged(service, job_id)

    service.kill(api.proc)  # SIGKILL: no graceful shutdown
    killed_at = time.monotonic()
    port = int(api.base_url.rsplit(":", 1)[1])
    api = service.start_api(port)
    wait_for("/readyz 200", lambda: _readyz(api) == 200, deadline_s=30)
    ready_s = time.monotonic() - killed_at
    replay = _post_job(api, slow_training_config(epochs=6), **{"Idempotency-Key": "restart-1"})
    assert replay.json()["id"] == job_id and replay.headers.get("Idempotent-Replayed") == "true"

    final = service.wait_terminal(job_id)
    assert final.state == JobState.SUCCEEDED
    with api.client() as c:
        after_points = {p["seq"]: p for p in c.get(f"/v1/jobs/{job_id}/metrics",
                                                   params={"limit": 10_000}).json()["points"]}
        after_ckpts = {x["name"] for x in c.get(f"/v1/jobs/{job_id}/checkpoints").json()}
    losses = audit(service, job_id, before)
    losses.points += sum(1 for p in seen_points if after_points.get(p["seq"]) != p)
    losses.checkpoints += len(seen_ckpts - after_ckpts)
    losses.assert_none()
    evidence("API process SIGKILL + restart mid-job", 1, losses, [ready_s])
