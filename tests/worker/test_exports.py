"""Tracking exports of a job run by execute_job (the task body) on a real SQLite store and the real tiny trainer:
TensorBoard event files read back with TensorBoard's own reader, an MLflow copy in a local file store, a failed
export that does not fail the job, and the code version and config digest on the job and its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import DiagnosticJobConfig, JobKind, JobState, code_version
from server.settings import Settings
from server.store import ArtifactStore, create_job, get_job, list_checkpoints, read_points
from server.store.artifacts import artifact_key, artifact_object
from server.store.metrics import MAX_PAGE_POINTS
from server.store.principals import ADMIN, ANONYMOUS
from tests.worker.configs import quick_diagnostic_config
from worker.tasks import execute_job
from worker.tensorboard_export import TENSORBOARD_ARTIFACT

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'store.sqlite'}", redis_url=CLOSED_REDIS,
                    artifact_dir=tmp_path / "artifacts", scratch_dir=tmp_path / "scratch", heartbeat_interval_s=0.2,
                    lease_timeout_s=5.0, **overrides)


def _run(sessions: sessionmaker[Session], settings: Settings, config: dict[str, Any]) -> str:
    with sessions() as s:
        job_id = create_job(s, kind=JobKind.DIAGNOSTIC, name="exported", config=config, max_attempts=1,
                            principal=ANONYMOUS, tags=["exports"]).id
    assert execute_job(job_id, worker="w1", settings=settings) is JobState.SUCCEEDED
    return job_id


def _stored(sessions: sessionmaker[Session], job_id: str, key: str) -> list[tuple[int, float]]:
    with sessions() as s:
        page = read_points(s, job_id, keys=[key], limit=MAX_PAGE_POINTS, principal=ADMIN)
        return [(p.step, p.value) for p in page.points]


def _assert_same_series(read: list[tuple[int, float]], stored: list[tuple[int, float]]) -> None:
    """Same steps, same values (TensorBoard keeps float32)."""
    assert stored
    assert [step for step, _ in read] == [step for step, _ in stored]
    assert [value for _, value in read] == pytest.approx([value for _, value in stored], rel=1e-6)


def test_the_tensorboard_artifact_reads_back_with_tensorboards_reader(sessions, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = _settings(tmp_path)
    job_id = _run(sessions, settings, quick_diagnostic_config())
    store = ArtifactStore(settings.artifact_location)
    _, media_type = artifact_object(store, job_id, TENSORBOARD_ARTIFACT)
    assert media_type == "application/octet-stream"
    path = store.fetch(artifact_key(store, job_id, TENSORBOARD_ARTIFACT), tmp_path / TENSORBOARD_ARTIFACT)
    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    for key in ("train/loss", "val/loss", "val/k_acc"):
        _assert_same_series([(e.step, e.value) for e in events.Scalars(key)], _stored(sessions, job_id, key))


def test_the_mlflow_copy_has_params_metrics_checkpoint_and_report(sessions, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a local file store
    uri = (tmp_path / "mlruns").as_uri()
    settings = _settings(tmp_path, mlflow_tracking_uri=uri, mlflow_experiment="ris-test")
    job_id = _run(sessions, settings, quick_diagnostic_config())

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ris-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`ris_jobs.job_id` = '{job_id}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.d_model"] == "16"
    assert run.data.params["phases.0.name"] == "k_only"
    assert run.data.tags["ris_jobs.code_version"] == code_version()
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/loss")]
    _assert_same_series(history, _stored(sessions, job_id, "val/loss"))
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "report.json" in names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/final.pt"]


def test_a_failing_export_is_counted_and_the_job_still_succeeds(sessions, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    settings = _settings(tmp_path, mlflow_tracking_uri=(blocker / "mlruns").as_uri())
    job_id = _run(sessions, settings, quick_diagnostic_config())
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
    assert job.state == JobState.SUCCEEDED
    assert job.latest_metrics["export/errors/mlflow"] >= 1
    store = ArtifactStore(settings.artifact_location)
    log_info = store.objects.stat(store.log_key(job_id))
    assert log_info is not None
    log_text = store.objects.read_range(store.log_key(job_id), 0, log_info.size).decode()
    assert "export mlflow.open failed" in log_text


def test_the_job_and_its_checkpoints_record_code_version_and_config_digest(sessions, tmp_path) -> None:
    settings = _settings(tmp_path)
    config = DiagnosticJobConfig.model_validate(quick_diagnostic_config()).model_dump(mode="json")  # as the API stores
    job_id = _run(sessions, settings, config)
    digest = DiagnosticJobConfig.model_validate(config).sha256()
    with sessions() as s:
        job = get_job(s, job_id, principal=ADMIN)
        checkpoints = list_checkpoints(s, job_id, principal=ADMIN)
    assert (job.code_version, job.config_sha256, job.tags) == (code_version(), digest, ["exports"])
    assert checkpoints and all((c.code_version, c.config_sha256) == (code_version(), digest) for c in checkpoints)
    store = ArtifactStore(settings.artifact_location)
    final = store.fetch(store.job_key(job_id, next(c.path for c in checkpoints if c.is_final)), tmp_path / "final.pt")
    assert torch.load(final, weights_only=True)["config_sha256"] == digest
