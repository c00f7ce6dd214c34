"""init_from: a training job that starts from the weights of an earlier job's checkpoint (or an upload), run by
execute_job (the task body) on a real SQLite store and the real tiny trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import JobKind, JobState, TrainingJobConfig
from server.settings import Settings
from server.store import ArtifactStore, create_job, get_job, list_checkpoints
from server.store.principals import ADMIN, ANONYMOUS
from server.store.uploads import new_upload_id, record_upload, write_upload
from tests.worker.configs import tiny_training_config
from worker.tasks import execute_job

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'store.sqlite'}", redis_url=CLOSED_REDIS,
                    artifact_dir=tmp_path / "artifacts", scratch_dir=tmp_path / "scratch", heartbeat_interval_s=0.2,
                    lease_timeout_s=5.0)


def _run(sessions: sessionmaker[Session], settings: Settings, config: dict[str, Any]) -> Any:
    stored = TrainingJobConfig.model_validate(config).model_dump(mode="json")
    with sessions() as s:
        job_id = create_job(s, kind=JobKind.TRAINING, name="t", config=stored, max_attempts=1,
                            principal=ANONYMOUS).id
    execute_job(job_id, worker="w1", settings=settings)
    with sessions() as s:
        return get_job(s, job_id, principal=ADMIN)


def _final_checkpoint(sessions: sessionmaker[Session], settings: Settings, job_id: str, dest: Path) -> Path:
    """The job's final checkpoint, downloaded from the artifact store to `dest`."""
    with sessions() as s:
        final = next(c for c in list_checkpoints(s, job_id, principal=ADMIN) if c.is_final)
    store = ArtifactStore(settings.artifact_location)
    return store.fetch(store.job_key(job_id, final.path), dest, sha256=final.sha256)


def _final_weights(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> dict[str, torch.Tensor]:
    path = _final_checkpoint(sessions, settings, job_id, Path(settings.scratch_dir) / f"{job_id}-final.pt")
    weights: dict[str, torch.Tensor] = torch.load(path, weights_only=True)["eval_model"]
    return weights


def _frozen_lr(config: dict[str, Any]) -> dict[str, Any]:
    """The same run with a learning rate so small that the weights stay where they started."""
    config["phases"][0].update(lr=1e-12, schedule="constant", warmup_fraction=0.0)
    return config


def test_init_from_a_job_continues_from_its_weights(sessions, tmp_path) -> None:
    settings = _settings(tmp_path)
    first = _run(sessions, settings, tiny_training_config(epochs=2))
    assert first.state == JobState.SUCCEEDED

    continued = _frozen_lr(tiny_training_config(epochs=1))
    continued["init_from"] = {"job_id": first.id, "checkpoint": "final"}
    second = _run(sessions, settings, continued)
    assert second.state == JobState.SUCCEEDED, second.failure_message
    fresh = _run(sessions, settings, _frozen_lr(tiny_training_config(epochs=1)))

    start = _final_weights(sessions, settings, first.id)
    after = _final_weights(sessions, settings, second.id)
    random_init = _final_weights(sessions, settings, fresh.id)
    assert after.keys() == start.keys()
    assert all(torch.allclose(after[k].float(), start[k].float(), atol=1e-5) for k in start)
    assert not all(torch.allclose(random_init[k].float(), start[k].float(), atol=1e-5) for k in start)
    assert second.config_sha256 != first.config_sha256


def test_init_from_an_upload_of_another_system_fails_with_the_reason(sessions, tmp_path) -> None:
    settings = _settings(tmp_path)
    first = _run(sessions, settings, tiny_training_config(epochs=1))
    data = _final_checkpoint(sessions, settings, first.id, tmp_path / "final.pt").read_bytes()
    store, upload_id = ArtifactStore(settings.artifact_location), new_upload_id()
    with write_upload(store, upload_id) as writer:
        writer.write(data)
    record_upload(store, upload_id, writer.digest(), principal=ANONYMOUS)

    other = tiny_training_config(epochs=1)
    other["system"] = {**other["system"], "n_ris_h": 6}
    other["init_from"] = {"upload_id": upload_id}
    job = _run(sessions, settings, other)
    assert (job.state, job.failure_reason) == (JobState.FAILED, "USER_CONFIG")
    assert "system" in job.failure_message
