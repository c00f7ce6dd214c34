"""Sweep jobs end to end: real Redis, real prefork workers for the trials and for the driver, a real reaper, the
API in process, the Optuna study in the jobs' SQLite database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from subprocess import Popen
from typing import Any

import optuna
import pytest
from pydantic import TypeAdapter

from api_schemas import JobCreate, JobState
from tests.fault.conftest import Service, api_client, wait_for
from tests.worker.configs import tiny_training_config

#: a sweep runs several tiny jobs one after another on two worker processes: minutes on a loaded 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(900)]

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def sweep_body(*, n_trials: int, max_concurrent: int, base_config: dict[str, Any]) -> dict[str, Any]:
    """A sweep over the learning rate (log scale, wide, so that trials differ) and the model width; the objective
    is the validation loss (continuous: no ties for the pruner to keep)."""
    return {
        "kind": "sweep", "name": "lr-width", "tags": ["sweep-test"],
        "config": {
            "base": {"kind": "training", "config": base_config},
            "space": {
                "phases.0.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                "model.d_model": {"type": "categorical", "choices": [8, 16]},
            },
            "objective": {"metric": "val/loss", "direction": "minimize"},
            "n_trials": n_trials, "max_concurrent": max_concurrent, "sampler": "tpe",
            "pruner": {"type": "asha", "min_resource": 1, "reduction_factor": 2}, "seed": 0,
        },
    }


def _world(make_service: Callable[..., Service], *, trial_workers: int = 2) -> tuple[Service, Popen[bytes]]:
    """The service with `trial_workers` workers for the trials, one for the drivers (returned), and a reaper."""
    # a lease of 15 s rather than the fault tests' 2.5 s: a sweep runs up to three processes of tiny jobs at once,
    # and on a loaded 2-core machine a heartbeat can be late by seconds (a lost lease here would be noise)
    svc = make_service(SWEEP_POLL_INTERVAL_S="0.3", LEASE_TIMEOUT_S="15", HEARTBEAT_INTERVAL_S="1")
    for i in range(trial_workers):
        svc.start_worker(f"gpu{i}")
    driver = svc.start_sweep_worker()
    svc.start_reaper()
    return svc, driver


def _max_overlap(children: list[dict[str, Any]]) -> int:
    """Most child jobs that were running at the same moment (from their start and finish times)."""
    moments: list[tuple[datetime, int]] = []
    for c in children:
        if c["started_at"] is None:
            continue
        moments += [(datetime.fromisoformat(c["started_at"]), 1), (datetime.fromisoformat(c["finished_at"]), -1)]
    running = peak = 0
    for _, delta in sorted(moments, key=lambda m: (m[0], m[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_a_six_trial_sweep_prunes_and_reports_its_best_trial(make_service: Callable[..., Service]) -> None:
    svc, _ = _world(make_service)
    client = api_client(svc)
    response = client.post("/v1/jobs", json=sweep_body(n_trials=6, max_concurrent=2,
                                                       base_config=tiny_training_config(epochs=4)))
    assert response.status_code == 202, response.text
    sweep_id = response.json()["id"]
    assert response.json()["links"]["trials"] == f"/v1/jobs/{sweep_id}/trials"

    sweep = wait_for("the sweep to end", lambda: (j := client.get(f"/v1/jobs/{sweep_id}").json())["state"]
                     in TERMINAL and j, deadline_s=600, interval_s=1.0)
    assert sweep["state"] == "SUCCEEDED", (sweep, svc.log_text("sweeps")[-4000:])
    assert sweep["progress"]["fraction"] == 1.0

    children = client.get("/v1/jobs", params={"parent_id": sweep_id, "limit": 50}).json()["items"]
    assert len(children) == 6
    assert all(c["parent_id"] == sweep_id and c["state"] in TERMINAL for c in children)
    assert all("sweep-test" in c["tags"] for c in children)
    assert _max_overlap(children) <= 2

    trials = client.get(f"/v1/jobs/{sweep_id}/trials").json()
    assert [t["number"] for t in trials["trials"]] == list(range(6))
    states = [t["state"] for t in trials["trials"]]
    assert states.count("PRUNED") >= 1, states
    assert states.count("COMPLETE") >= 1, states
    pruned = next(t for t in trials["trials"] if t["state"] == "PRUNED")
    pruned_job = client.get(f"/v1/jobs/{pruned['job_id']}").json()
    assert pruned_job["state"] == "CANCELLED" and pruned_job["failure"]["reason"] == "PRUNED"
    assert client.get(f"/v1/jobs/{pruned['job_id']}/checkpoints").json(), "a pruned trial keeps its last checkpoint"

    report = client.get(f"/v1/jobs/{sweep_id}/report").json()
    best = report["best_trial"]
    assert best["number"] == trials["best"]["number"]
    assert best["value"] == min(t["value"] for t in trials["trials"] if t["state"] == "COMPLETE")
    assert best["params"]["model.d_model"] in (8, 16)
    assert TypeAdapter(JobCreate).validate_python(best["job"]).kind == "training"  # ready to POST
    assert best["job"]["config"]["phases"][0]["lr"] == pytest.approx(best["params"]["phases.0.lr"])
    assert report["counts"]["PRUNED"] == states.count("PRUNED")

    # the study is Optuna's own, in the jobs' database: optuna-dashboard opens the same URL
    study = optuna.load_study(study_name=f"sweep-{sweep_id}", storage=svc.settings.database_url)
    assert [t.state.name for t in study.trials] == states
    assert study.best_trial.number == best["number"]


def test_killing_the_driver_loses_no_trial(make_service: Callable[..., Service]) -> None:
    svc, driver = _world(make_service)
    client = api_client(svc)
    base = tiny_training_config(epochs=3, sleep_per_step_s=0.3)  # ~4 s of steps per trial, beyond start-up
    response = client.post("/v1/jobs", json=sweep_body(n_trials=4, max_concurrent=2, base_config=base))
    assert response.status_code == 202, response.text
    sweep_id = response.json()["id"]

    def two_trials_running() -> bool:
        items = client.get("/v1/jobs", params={"parent_id": sweep_id}).json()["items"]
        return sum(c["state"] == "RUNNING" for c in items) == 2

    wait_for("two trials running", two_trials_running, deadline_s=240, interval_s=0.5)
    svc.kill(driver)  # the driver's machine is gone; the trials keep running on theirs
    svc.start_sweep_worker("sweeps-2")

    sweep = wait_for("the sweep to end", lambda: (j := client.get(f"/v1/jobs/{sweep_id}").json())["state"]
                     in TERMINAL and j, deadline_s=600, interval_s=1.0)
    assert sweep["state"] == "SUCCEEDED", (sweep, svc.log_text("sweeps")[-4000:])
    assert sweep["attempt"] == 2  # the reaper requeued the driver; the new attempt resumed from the study

    children = client.get("/v1/jobs", params={"parent_id": sweep_id}).json()["items"]
    trials = client.get(f"/v1/jobs/{sweep_id}/trials").json()["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3]  # one child per trial: none lost, none doubled
    assert len(children) == 4
    assert all(c["state"] in TERMINAL for c in children)
    study = optuna.load_study(study_name=f"sweep-{sweep_id}", storage=svc.settings.database_url)
    assert len(study.trials) == 4
    assert all(t.state.is_finished() for t in study.trials)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 4
    lrs = [t.params["phases.0.lr"] for t in study.trials]
    assert len(set(lrs)) == 4, lrs  # the resumed driver drew new parameters, it did not replay the old draws


def test_cancelling_a_sweep_cancels_its_trials(make_service: Callable[..., Service]) -> None:
    svc, _ = _world(make_service, trial_workers=1)
    client = api_client(svc)
    base = tiny_training_config(epochs=20, sleep_per_step_s=0.3)
    sweep_id = client.post("/v1/jobs", json=sweep_body(n_trials=4, max_concurrent=2, base_config=base)).json()["id"]
    wait_for("a trial running", lambda: any(
        c["state"] == "RUNNING" for c in client.get("/v1/jobs", params={"parent_id": sweep_id}).json()["items"]),
        deadline_s=240, interval_s=0.5)
    assert client.post(f"/v1/jobs/{sweep_id}/cancel").status_code == 202
    sweep = svc.wait_terminal(sweep_id, deadline_s=120)
    assert JobState(sweep.state) is JobState.CANCELLED
    children = client.get("/v1/jobs", params={"parent_id": sweep_id}).json()["items"]
    for child in children:
        assert svc.wait_terminal(child["id"], deadline_s=120).state == "CANCELLED"
