"""Sweep submission (the space checked against the base config's schema), the trials listing, the cancel of a
sweep's trials, tags and the parent filter, and init_from's submit-time check — through the real app (SQLite in
tmp_path, real Redis db 14). The sweeps' end-to-end runs are in tests/sweeps."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api_schemas import FailureReason, JobKind, JobState, MetricPoint, TrainingJobConfig, code_version, config_sha256
from api_schemas.sweeps import trial_tag
from server.dispatch import all_job_queues, queue_depth, sweep_queue
from server.store import append_points, claim_job, create_job, transition
from server.store.principals import ANONYMOUS, WORKER
from tests.factories import new_lease, tiny_config


def training_config(**model: Any) -> dict[str, Any]:
    config = {k: v for k, v in tiny_config().items() if k in TrainingJobConfig.model_fields}
    config["model"] = {**config["model"], **model}
    return config


def sweep_body(space: dict[str, Any], **config: Any) -> dict[str, Any]:
    return {"kind": "sweep", "name": "s", "tags": ["team-a"],
            "config": {"base": {"kind": "training", "config": training_config()}, "space": space, "n_trials": 4,
                       "max_concurrent": 2, **config}}


LR = {"phases.0.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}}


def test_a_sweep_is_accepted_and_sent_to_the_sweep_drivers_queue(
    client: TestClient, redis_client: redis.Redis, job_queue: str
) -> None:
    def depths() -> tuple[int, int]:
        """Messages waiting for the sweep drivers, and in the device queues."""
        return (queue_depth(redis_client, sweep_queue(job_queue)),
                sum(queue_depth(redis_client, q) for q in all_job_queues(job_queue)))

    before = depths()
    r = client.post("/v1/jobs", json=sweep_body(LR))
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["tags"], job["links"]["trials"]) == ("sweep", ["team-a"], f"/v1/jobs/{job['id']}/trials")
    assert job["config_sha256"] == config_sha256(job["config"])
    assert job["code_version"] == code_version()
    assert depths() == (before[0] + 1, before[1])


@pytest.mark.parametrize(("space", "needle"), [
    ({"phases.3.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "space path 'phases.3.lr'"),
    ({"model.width": {"type": "int", "low": 8, "high": 16}}, "space path 'model.width'"),
    ({"phases.0.lr": {"type": "float", "low": 1e-4, "high": 3.0}}, "the value 3.0 is outside"),
    ({"model.d_model": {"type": "categorical", "choices": [16, 2000]}}, "the value 2000 is outside"),
    ({"model.d_model": {"type": "categorical", "choices": [16, 15]}}, "multiple of n_heads"),
    ({"model": {"type": "int", "low": 1, "high": 2}}, "names a section of the config"),
])
def test_a_bad_space_is_a_422_naming_the_path_or_the_value(client: TestClient, space: dict[str, Any],
                                                           needle: str) -> None:
    r = client.post("/v1/jobs", json=sweep_body(space))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    messages = " ".join(e["message"] for e in r.json()["errors"])
    assert needle in messages


def test_a_bad_objective_or_bound_order_is_a_422(client: TestClient) -> None:
    r = client.post("/v1/jobs", json=sweep_body(LR, objective={"metric": "loss"}))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "config.objective.metric"
    r = client.post("/v1/jobs", json=sweep_body({"phases.0.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}))
    assert r.status_code == 422


def _child(session: Session, sweep_id: str, number: int, *, lr: float) -> str:
    config = training_config()
    config["phases"][0]["lr"] = lr
    return create_job(session, kind=JobKind.TRAINING, name=f"t{number}", config=config, max_attempts=2,
                      principal=ANONYMOUS, parent_id=sweep_id, tags=["team-a", trial_tag(number)]).id


def test_trials_list_params_state_value_and_the_best(client: TestClient, api_session: Session) -> None:
    sweep_id = client.post("/v1/jobs", json=sweep_body(LR, objective={"metric": "val/loss",
                                                                         "direction": "minimize"})).json()["id"]
    done, pruned, running = (_child(api_session, sweep_id, n, lr=lr) for n, lr in ((0, 1e-3), (1, 2e-3), (2, 5e-4)))
    for job_id, value in ((done, 0.5), (pruned, 0.9)):
        lease = new_lease()
        claim_job(api_session, job_id, worker="w", lease_token=lease)
        append_points(api_session, job_id, [MetricPoint(phase="k_only", epoch=1, step=4, key="val/loss",
                                                        value=value)], lease_token=lease)
        api_session.commit()
        if job_id == done:
            transition(api_session, job_id, JobState.SUCCEEDED, lease_token=lease, principal=WORKER)
        else:
            transition(api_session, job_id, JobState.CANCELLED, lease_token=lease, principal=WORKER,
                       failure_reason=FailureReason.PRUNED, message="pruned after epoch 1")
    claim_job(api_session, running, worker="w", lease_token=new_lease())

    page = client.get(f"/v1/jobs/{sweep_id}/trials").json()
    trials = {t["number"]: t for t in page["trials"]}
    assert [(trials[n]["state"], trials[n]["value"]) for n in (0, 1, 2)] == [
        ("COMPLETE", 0.5), ("PRUNED", 0.9), ("RUNNING", None)]
    assert trials[1]["params"] == {"phases.0.lr": 2e-3}
    assert trials[0]["links"]["job"] == f"/v1/jobs/{done}"
    assert page["best"]["number"] == 0

    pruned_job = client.get(f"/v1/jobs/{pruned}").json()
    assert (pruned_job["state"], pruned_job["failure"]["reason"]) == ("CANCELLED", "PRUNED")
    assert pruned_job["links"]["parent"] == f"/v1/jobs/{sweep_id}"

    listed = client.get("/v1/jobs", params={"parent_id": sweep_id}).json()["items"]
    assert {j["id"] for j in listed} == {done, pruned, running}
    assert client.get("/v1/jobs", params={"tag": trial_tag(1)}).json()["items"][0]["id"] == pruned
    assert len(client.get("/v1/jobs", params={"tag": "team-a"}).json()["items"]) == 4  # the sweep and 3 trials
    assert client.get("/v1/jobs", params={"tag": "team"}).json()["items"] == []  # whole tags only


def test_cancelling_a_sweep_cancels_its_unfinished_trials(client: TestClient, api_session: Session,
                                                          redis_client: redis.Redis) -> None:
    sweep_id = client.post("/v1/jobs", json=sweep_body(LR)).json()["id"]
    claim_job(api_session, sweep_id, worker="driver", lease_token=new_lease())
    queued, running = _child(api_session, sweep_id, 0, lr=1e-3), _child(api_session, sweep_id, 1, lr=2e-3)
    claim_job(api_session, running, worker="w", lease_token=new_lease())
    assert client.post(f"/v1/jobs/{sweep_id}/cancel").json()["state"] == "CANCELLING"
    assert client.get(f"/v1/jobs/{queued}").json()["state"] == "CANCELLED"
    assert client.get(f"/v1/jobs/{running}").json()["state"] == "CANCELLING"
    assert redis_client.exists(f"job:{running}:cancel")


def test_trials_of_a_job_that_is_not_a_sweep_is_a_404(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={"kind": "training", "config": training_config()}).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/trials")
    assert r.status_code == 404
    assert "not a sweep" in r.json()["detail"]


def test_a_bad_tag_is_a_422(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"kind": "training", "config": training_config(), "tags": ["has space"]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "tags.0"
    assert client.get("/v1/jobs", params={"tag": "a\"b"}).status_code == 422


def test_init_from_a_job_of_another_system_or_shape_is_a_422_at_submit(client: TestClient) -> None:
    source = client.post("/v1/jobs", json={"kind": "training", "config": training_config()}).json()["id"]
    ok = training_config(dropout=0.1)  # does not change the weights' shapes
    ok["init_from"] = {"job_id": source, "checkpoint": "final"}
    assert client.post("/v1/jobs", json={"kind": "training", "config": ok}).status_code == 202

    wider = training_config(d_model=32)
    wider["init_from"] = {"job_id": source}
    r = client.post("/v1/jobs", json={"kind": "training", "config": wider})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "config.init_from"
    assert "model.d_model" in r.json()["errors"][0]["message"]

    other_system = training_config()
    other_system["system"] = {**other_system["system"], "n_ris_h": 6}
    other_system["init_from"] = {"job_id": source}
    r = client.post("/v1/jobs", json={"kind": "training", "config": other_system})
    assert r.status_code == 422 and "system" in r.json()["errors"][0]["message"]

    missing = training_config()
    missing["init_from"] = {"job_id": "00000000-0000-0000-0000-000000000000"}
    r = client.post("/v1/jobs", json={"kind": "training", "config": missing})
    assert r.status_code == 422 and "does not exist" in r.json()["errors"][0]["message"]

    unknown_upload = training_config()
    unknown_upload["init_from"] = {"upload_id": "0" * 32}
    r = client.post("/v1/jobs", json={"kind": "training", "config": unknown_upload})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "config.init_from"

    in_sweep = sweep_body(LR)
    in_sweep["config"]["base"]["config"] = wider
    r = client.post("/v1/jobs", json=in_sweep)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "config.base.config.init_from"
