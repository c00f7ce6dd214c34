"""An optional copy of a job's run in MLflow (set MLFLOW_TRACKING_URI): params, metrics, final checkpoint, report.

Owns: `MlflowExporter` and `flatten_config`. One MLflow run per job, tagged `ris_jobs.job_id` (a resumed
attempt finds and continues the same run): params are the flattened config (`model.d_model`, `phases.0.lr`,
...), metrics keep their key and global step, and at the end the final checkpoint and the report are logged as
artifacts and the run is terminated FINISHED, KILLED (cancelled) or FAILED. The job store stays the truth:
this exporter runs behind `worker.exports.ExportingSink`, so a failure here is logged and counted, never fatal.
For a local file store (`file:///path/mlruns`), MLflow 3 also wants `MLFLOW_ALLOW_FILE_STORE=true`.
mlflow is imported when the exporter is built (in the worker's child).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api_schemas import CheckpointInfo, JobState, MetricPoint

#: MLflow's limits per log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_CHARS = 6000
JOB_ID_TAG = "ris_jobs.job_id"
_RUN_STATUS = {JobState.SUCCEEDED: "FINISHED", JobState.CANCELLED: "KILLED", JobState.FAILED: "FAILED"}


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """`{"model": {"d_model": 128}, "phases": [{"lr": 1e-3}]}` → `{"model.d_model": "128", "phases.0.lr": "0.001"}`."""
    if isinstance(config, dict):
        items: Sequence[tuple[str, Any]] = [(str(k), v) for k, v in config.items()]
    elif isinstance(config, list | tuple):
        items = [(str(i), v) for i, v in enumerate(config)]
    else:
        return {prefix: json.dumps(config) if not isinstance(config, str) else config}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten_config(value, f"{prefix}.{key}" if prefix else key))
    return out


class MlflowExporter:
    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str, *, job_id: str, kind: str, job_name: str | None,
                 config: dict[str, Any], tags: list[str], code_version: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)
        existing = self._client.get_experiment_by_name(experiment)
        experiment_id = existing.experiment_id if existing is not None else self._client.create_experiment(experiment)
        runs = self._client.search_runs([experiment_id], filter_string=f"tags.`{JOB_ID_TAG}` = '{job_id}'",
                                        max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
            return  # a later attempt: the params were logged by the first
        run_tags = {JOB_ID_TAG: job_id, "ris_jobs.kind": kind, "ris_jobs.code_version": code_version or "",
                    **{f"ris_jobs.tag.{t}": "" for t in tags}}
        run = self._client.create_run(experiment_id, run_name=job_name or job_id, tags=run_tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:_MAX_PARAM_CHARS]) for k, v in flatten_config(config).items()]
        for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=params[i:i + _MAX_PARAMS_PER_BATCH])

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics = [Metric(p.key, p.value, now_ms, p.step) for p in points]
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[i:i + _MAX_METRICS_PER_BATCH])

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def finish(self, *, state: JobState, report: dict[str, Any] | None, final_checkpoint: Path | None) -> None:
        if final_checkpoint is not None:
            self._client.log_artifact(self.run_id, str(final_checkpoint), artifact_path="checkpoints")
        if report is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "report.json"
                path.write_text(json.dumps(report, indent=2), encoding="utf-8")
                self._client.log_artifact(self.run_id, str(path))
        self._client.set_terminated(self.run_id, _RUN_STATUS.get(state, "FAILED"))
