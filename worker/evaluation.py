"""The body of an `evaluation` job: resolve and validate the checkpoint, evaluate, write the files.

Owns run_evaluation_job, resolve_checkpoint and EvaluationResult; `worker.tasks` claims the job, calls this
under the lease and writes the terminal state. Imports neither torch nor ris_model at import time (the prefork
parent imports worker modules: no CUDA before fork); `ris_model` is imported inside run_evaluation_job.

Trust boundary: a checkpoint named by an earlier job or uploaded with POST /v1/checkpoints is untrusted bytes.
It is downloaded from the artifact store into the worker's scratch directory, its sha256 checked against the
record, and loaded only by `ris_model.train.checkpoint.load_checkpoint` (torch.load with weights_only=True: a
pickle that would run code is refused by the unpickler, never executed).
Any problem with what the user named — a missing job, checkpoint or upload, a file that fails that load, a
config that does not fit the checkpoint's system — raises UserInputRejected (→ FAILED USER_CONFIG).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api_schemas import EvaluationJobConfig, MetricPoint
from api_schemas.evaluation import EvaluationArtifact, JobCheckpointSource, UploadCheckpointSource
from api_schemas.metrics import PROGRESS_FRACTION
from server.store import get_checkpoint
from server.store.artifacts import ARTIFACT_MEDIA_TYPES, ArtifactStore, artifact_key, checkpoint_object
from server.store.errors import ArtifactRejected, CheckpointNotFound, JobNotFound, LeaseLost, UploadNotFound
from server.store.principals import WORKER
from server.store.uploads import upload_object
from worker.failures import TrainerFailed, UserInputRejected, scrub_paths

log = logging.getLogger(__name__)
EVALUATION_PHASE = "evaluation"
REPORT_JSON, REPORT_MD = "report.json", "report.md"


@dataclass(frozen=True)
class EvaluationResult:
    """report: the EvaluationReport as JSON (None when stopped); stopped: "cancel" | "timeout" | None."""

    report: dict[str, Any] | None
    stopped: str | None = None


class _Stopped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def resolve_checkpoint(config: EvaluationJobConfig, *, sessions: sessionmaker[Session],
                       artifacts: ArtifactStore, inputs_dir: Path) -> Path:
    """The configured checkpoint source, downloaded into `inputs_dir` with its recorded sha256 checked.

    Raises UserInputRejected with the reason."""
    return resolve_source(config.checkpoint, sessions=sessions, artifacts=artifacts, inputs_dir=inputs_dir)


def resolve_source(source: JobCheckpointSource | UploadCheckpointSource, *, sessions: sessionmaker[Session],
                   artifacts: ArtifactStore, inputs_dir: Path) -> Path:
    """A checkpoint source (a job's checkpoint, or an upload), downloaded into `inputs_dir` with its recorded
    sha256 checked. Raises UserInputRejected with the reason."""
    try:
        if isinstance(source, JobCheckpointSource):
            with sessions() as session:
                row = get_checkpoint(session, source.job_id, source.checkpoint, principal=WORKER)
                key, _ = checkpoint_object(artifacts, row)
                sha256, filename = row.sha256, f"{row.name}.pt"
        else:
            key, record = upload_object(artifacts, source.upload_id, principal=WORKER)
            sha256, filename = record.sha256, f"{source.upload_id}.pt"
        return artifacts.fetch(key, inputs_dir / filename, sha256=sha256)
    except FileNotFoundError as exc:
        raise UserInputRejected(f"checkpoint source {source.model_dump()} cannot be used: its object is gone") from exc
    except (JobNotFound, CheckpointNotFound, UploadNotFound, ArtifactRejected) as exc:
        raise UserInputRejected(f"checkpoint source {source.model_dump()} cannot be used: {exc}") from exc


#: torch's weights-only unpickler names what it refused: "Unsupported global: GLOBAL posix.system was not ...".
_REFUSED_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_WEIGHTS_UNPICKLER_RE = re.compile(r"WeightsUnpickler error: ([^\n.]+)")


def rejection_reason(exc: BaseException) -> str:
    """Why a checkpoint was refused, naming the real cause (e.g. "refused global posix.system": the pickle asked
    for a callable the weights-only loader does not allow), without server paths."""
    cause = str(exc.__cause__ or "")
    refused = _REFUSED_GLOBAL_RE.search(cause)
    if refused:
        return (f"the file holds code: the weights-only loader refused global {refused.group(1)} "
                "(it was not run)")
    unpickler = _WEIGHTS_UNPICKLER_RE.search(cause)
    if unpickler:
        return f"the weights-only loader refused it: {unpickler.group(1).strip()}"
    return scrub_paths(str(exc))


def run_evaluation_job(job_id: str, config_json: dict[str, Any], *, sessions: sessionmaker[Session],
                       artifacts: ArtifactStore, inputs_dir: Path, sink: Any, should_stop: Callable[[], str | None]
                       ) -> EvaluationResult:
    """Evaluate the configured checkpoint and write `report.json`, `report.md` and the PNGs to the artifact
    store's `jobs/<id>/artifacts/` (each under a temporary key, then committed).

    Args:
        job_id: the evaluation job (for its artifact directory and the artifact URLs).
        config_json: the stored EvaluationJobConfig.
        sessions: the worker's session factory (to resolve a job's checkpoint).
        artifacts: the artifact store.
        inputs_dir: where the checkpoint to evaluate is downloaded (the job's scratch directory).
        sink: a MetricSink; gets `progress/fraction` points.
        should_stop: polled at every progress report ("cancel" / "timeout" stop the evaluation).

    Raises:
        pydantic.ValidationError (bad stored config), UserInputRejected (bad checkpoint source or file),
        LeaseLost, TrainerFailed (the evaluation itself failed).
    """
    config = EvaluationJobConfig.model_validate(config_json)
    path = resolve_checkpoint(config, sessions=sessions, artifacts=artifacts, inputs_dir=inputs_dir)
    from ris_model.errors import CheckpointError  # lazy: torch only in the child (no CUDA before fork)
    from ris_model.evaluate.evaluation import check_config, evaluate
    from ris_model.evaluate.plots import render_plots
    from ris_model.inference import load_estimator

    try:
        estimator = load_estimator(path)
        check_config(config, estimator.system)
    except (CheckpointError, ValueError) as exc:
        raise UserInputRejected(f"the checkpoint to evaluate was rejected: {rejection_reason(exc)}") from exc
    estimator.source["path"] = path.name  # never publish the worker's filesystem layout
    log.info("evaluating %s (%s scenes, baselines %s)", path.name, config.n_scenes, list(config.baselines))
    steps = iter(range(1 << 62))

    def progress(fraction: float, stage: str) -> None:
        sink.log_metrics([MetricPoint(phase=EVALUATION_PHASE, epoch=0, step=next(steps), key=PROGRESS_FRACTION,
                                      value=fraction)])
        reason = should_stop()
        if reason is not None:
            raise _Stopped(reason)

    try:
        report = evaluate(estimator, config, progress=progress)
        figures = render_plots(report)
    except (_Stopped, LeaseLost) as exc:
        if isinstance(exc, LeaseLost):
            raise
        log.info("evaluation stopped: %s", exc.reason)
        return EvaluationResult(report=None, stopped=exc.reason)
    except Exception as exc:
        raise TrainerFailed(exc) from exc
    files = _write_files(job_id, artifacts, report, figures)
    return EvaluationResult(report=report.model_copy(update={"artifacts": files}).model_dump(mode="json"))


def write_artifact(artifacts: ArtifactStore, job_id: str, name: str, data: bytes) -> EvaluationArtifact:
    """Write one output file of the job to the artifact store's `jobs/<id>/artifacts/` (a temporary key, then
    committed) and describe it (name, media type, size, sha256, download URL) for the report."""
    digest = artifacts.objects.write(artifact_key(artifacts, job_id, name), data)
    return EvaluationArtifact(name=name, media_type=ARTIFACT_MEDIA_TYPES[name.rsplit(".", 1)[1]], size=digest.size,
                              sha256=digest.sha256, url=f"/v1/jobs/{job_id}/artifacts/{name}")


def _write_files(job_id: str, artifacts: ArtifactStore, report: Any, figures: dict[str, bytes]
                 ) -> list[EvaluationArtifact]:
    """Write the PNGs, then report.md (linking them), then report.json (listing them), each committed whole."""
    written: list[EvaluationArtifact] = []

    def write(name: str, data: bytes) -> None:
        written.append(write_artifact(artifacts, job_id, name, data))

    for name, data in figures.items():
        write(name, data)
    write(REPORT_MD, report.model_copy(update={"artifacts": list(written)}).to_markdown().encode())
    body = json.dumps(report.model_copy(update={"artifacts": list(written)}).model_dump(mode="json"), indent=2)
    write(REPORT_JSON, body.encode())
    log.info("wrote %s", ", ".join(a.name for a in written))
    return written
