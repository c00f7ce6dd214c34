"""Job routes (ARCHITECTURE.md, "HTTP API"): create, list, read, events, logs, report, cancel, delete, a sweep's trials.

Routes parse, call `server.store`, and shape the response; no SQL here and no error responses (domain errors
propagate to `server.errors`). POST /v1/jobs commits the QUEUED row first, then enqueues the id alone
(a worker never receives a job the database does not hold); if the broker is down it answers 503 and leaves the job
QUEUED for the dispatch sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api_schemas import (
    DEFAULT_RESOURCES,
    DebugConfig,
    DiagnosticReport,
    EvaluationJobCreate,
    EvaluationReport,
    Failure,
    FailureReason,
    JobCheckpointSource,
    JobCreate,
    JobEvent,
    JobKind,
    JobPublic,
    JobsPage,
    JobState,
    NonfiniteSummary,
    Progress,
    Resources,
    SweepJobConfig,
    TrialPublic,
    TrialsPage,
    TrialState,
    split_stored_config,
    stored_config,
    stored_priority,
)
from api_schemas.lineage import TAG_PATTERN, init_mismatch
from api_schemas.markdown import markdown_table
from api_schemas.sweeps import get_path, trial_number
from server import dispatch
from server.deps import (
    ArtifactsDep,
    PrincipalDep,
    ProducerDep,
    RedisDep,
    SessionDep,
    SettingsDep,
    strict_json_body,
)
from server.errors import (
    FaultInjectionRefused,
    InvalidReference,
    JobNotDispatched,
    QueueLimitExceeded,
    problem_responses,
)
from server.store import job_queries as store_queries
from server.store import jobs as store_jobs
from server.store import live
from server.store.artifacts import checkpoint_object, get_checkpoint
from server.store.errors import CheckpointNotFound, JobNotFound, NotASweep, UploadNotFound
from server.store.files import read_log
from server.store.models import JobRow
from server.store.uploads import read_upload

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

#: Largest log chunk one request returns, bytes.
MAX_LOG_CHUNK_BYTES = 8 * 1024 * 1024
_PROBLEMS = problem_responses(401, 404, 409, 422)


# ---------------------------------------------------------------------------------------------- shaping


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {
        "self": base, "events": f"{base}/events", "metrics": f"{base}/metrics",
        "metrics_stream": f"{base}/metrics/stream", "logs": f"{base}/logs", "report": f"{base}/report",
        "checkpoints": f"{base}/checkpoints", "cancel": f"{base}/cancel",
    }


def to_job_public(job: JobRow, waiting_reason: str | None = None) -> JobPublic:
    """The wire form of a job row (non-finite latest values, stored as null, become NaN → JSON null);
    `waiting_reason` comes from `store_queries.waiting_reasons` (QUEUED jobs only)."""
    config, resources = split_stored_config(job.config)
    failure = None
    if job.failure_reason is not None:
        failure = Failure(reason=FailureReason(job.failure_reason), message=job.failure_message or "")
    links = job_links(job.id)
    if job.kind == JobKind.SWEEP:
        links["trials"] = f"/v1/jobs/{job.id}/trials"
    if job.parent_id is not None:
        links["parent"] = f"/v1/jobs/{job.parent_id}"
    return JobPublic(
        id=job.id, kind=JobKind(job.kind), name=job.name, state=JobState(job.state), attempt=job.attempt,
        max_attempts=job.max_attempts, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at,
        progress=Progress(phase=job.phase, epoch=job.epoch, step=job.step, fraction=job.progress_fraction),
        nonfinite_steps=NonfiniteSummary.model_validate(job.nonfinite or {}),
        latest_metrics={k: (math.nan if v is None else float(v)) for k, v in (job.latest_metrics or {}).items()},
        failure=failure, config=config, resources=resources, priority=stored_priority(job.config),
        waiting_reason=waiting_reason if job.state == JobState.QUEUED else None, links=links,
        parent_id=job.parent_id, tags=list(job.tags or []), code_version=job.code_version,
        config_sha256=job.config_sha256,
    )


def job_public(session: Session, job: JobRow) -> JobPublic:
    """`to_job_public` with the job's waiting reason (one more read, for QUEUED jobs only)."""
    if job.state != JobState.QUEUED:
        return to_job_public(job)
    return to_job_public(job, store_queries.waiting_reasons(session, [job.id]).get(job.id))


def _body_sha256(body: Any) -> str:
    """sha256 of the validated body's canonical JSON: the same job spec hashes the same however it was written."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _refuse_oversized(resources: Resources | None, *, max_gpus: int) -> None:
    """A 422 naming `resources.gpus` when a job asks more processes than one job may have on this server."""
    if resources is not None and resources.gpus > max_gpus:
        raise RequestValidationError([{
            "loc": ("body", "resources", "gpus"), "type": "less_than_equal", "input": resources.gpus,
            "msg": f"a job may use at most {max_gpus} GPUs (MAX_GPUS_PER_JOB); it asked {resources.gpus}",
        }])


def _check_checkpoint_source(body: JobCreate, session: SessionDep, artifacts: ArtifactsDep,
                             principal: PrincipalDep) -> None:
    """An evaluation must name a checkpoint the caller can use: a job of theirs that has it (with its file), or
    an upload of theirs. Refused here (422) rather than as a FAILED job a second later."""
    if not isinstance(body, EvaluationJobCreate):
        return
    source = body.config.checkpoint
    try:
        if isinstance(source, JobCheckpointSource):
            checkpoint_object(artifacts, get_checkpoint(session, source.job_id, source.checkpoint, principal=principal))
        else:
            read_upload(artifacts, source.upload_id, principal=principal)
    except (JobNotFound, CheckpointNotFound, UploadNotFound) as exc:
        raise InvalidReference("config.checkpoint", str(exc)) from exc


def _refuse_fault_injection(config: BaseModel, *, allowed: bool) -> None:
    """FaultInjectionRefused when the config (given, or expanded from a preset) switches on a `debug` fault."""
    debug = getattr(config, "debug", None)
    if not allowed and isinstance(debug, DebugConfig) and debug.injects_faults:
        raise FaultInjectionRefused()


def _dispatch_or_503(session: SessionDep, producer: ProducerDep, job: JobRow, queue: str) -> None:
    try:
        dispatch.dispatch_job(session, producer, job.id, queue)
    except dispatch.DispatchError as exc:
        log.warning("job %s stays QUEUED undispatched: %s", job.id, exc)
        raise JobNotDispatched(job.id, exc) from exc


# ---------------------------------------------------------------------------------------------- routes


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, operation_id="create_job",
    responses={**_PROBLEMS, 400: _PROBLEMS[422], 413: _PROBLEMS[422], 415: _PROBLEMS[422], 429: _PROBLEMS[422],
               503: _PROBLEMS[422]},
    dependencies=[Depends(strict_json_body(JobCreate))],  # no lax coercion ("3" → 3) the schema does not allow
)
def create_job(
    body: Annotated[JobCreate, Body()],
    response: Response,
    session: SessionDep,
    artifacts: ArtifactsDep,
    settings: SettingsDep,
    producer: ProducerDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    ] = None,
) -> JobPublic:
    """Submit a job: 202 + Location; the same Idempotency-Key and body returns the same job."""
    _refuse_fault_injection(body.config, allowed=settings.allow_fault_injection)
    if isinstance(body.config, SweepJobConfig):  # every trial runs the base config
        base = body.config.base.config_model().model_validate(body.config.base.config)
        _refuse_fault_injection(base, allowed=settings.allow_fault_injection)
    resources: Resources = getattr(body, "resources", DEFAULT_RESOURCES)
    _refuse_oversized(resources, max_gpus=settings.max_gpus_per_job)
    body_sha256 = _body_sha256(body) if idempotency_key else None
    if idempotency_key and body_sha256:
        existing = store_jobs.find_idempotent_job(
            session, principal=principal, key=idempotency_key, body_sha256=body_sha256
        )
        if existing is not None:
            if existing.state == JobState.QUEUED and existing.celery_task_id is None:
                _dispatch_or_503(session, producer, existing, settings.job_queue)
            response.headers["Location"] = f"/v1/jobs/{existing.id}"
            response.headers["Idempotent-Replayed"] = "true"
            return to_job_public(store_jobs.get_job(session, existing.id, principal=principal))
    _check_checkpoint_source(body, session, artifacts, principal)
    check_init_from(session, body, artifacts, principal)
    if store_queries.count_queued(session, principal=principal) >= settings.max_queued_jobs_per_key:
        raise QueueLimitExceeded(
            f"{settings.max_queued_jobs_per_key} jobs are already QUEUED for this API key; wait or cancel some"
        )
    job = store_jobs.create_job(
        session, kind=JobKind(body.kind), name=body.name,
        config=stored_config(body.config.model_dump(mode="json"), resources, body.priority),
        max_attempts=body.max_attempts, principal=principal, idempotency_key=idempotency_key,
        body_sha256=body_sha256, tags=body.tags,
    )
    if job.celery_task_id is None:  # an idempotent race may hand back a job that is already dispatched
        _dispatch_or_503(session, producer, job, settings.job_queue)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_job_public(store_jobs.get_job(session, job.id, principal=principal))


@router.get("", operation_id="read_jobs", responses=_PROBLEMS)
def read_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    parent_id: Annotated[str | None, Query(max_length=64, description="the trials of this sweep")] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN, description="jobs that carry this tag")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> JobsPage:
    """The caller's jobs (every job for an admin key) newest first, filtered by state, kind, parent sweep and tag,
    paged by `next_page_token`."""
    listing = store_queries.list_jobs(session, principal=principal, state=state, kind=kind, parent_id=parent_id,
                                      tag=tag, limit=limit,
                                      page_token=page_token)
    reasons = store_queries.waiting_reasons(session, [j.id for j in listing.jobs if j.state == JobState.QUEUED])
    return JobsPage(items=[to_job_public(j, reasons.get(j.id)) for j in listing.jobs],
                    next_page_token=listing.next_page_token)


@router.get("/{job_id}", operation_id="read_job", responses=_PROBLEMS)
async def read_job(job_id: str, request: Request, principal: PrincipalDep) -> JobPublic:
    """One job: state, progress, non-finite steps, latest metrics, failure, attempt, links.

    The hot path that clients poll: one primary-key read (~0.1 ms on SQLite), so it runs on the event loop
    instead of two thread-pool hops (a sync dependency and a sync route), which costs more than the read itself
    (bench/api.py measures it)."""
    with request.app.state.session_factory() as session:
        return job_public(session, store_jobs.get_job(session, job_id, principal=principal))


@router.get("/{job_id}/events", operation_id="read_job_events", responses=_PROBLEMS)
def read_job_events(job_id: str, session: SessionDep, principal: PrincipalDep) -> list[JobEvent]:
    """The job's state transitions, oldest first."""
    return [
        JobEvent(
            from_state=JobState(e.from_state) if e.from_state else None, to_state=JobState(e.to_state), at=e.at,
            message=e.message,
        )
        for e in store_queries.list_events(session, job_id, principal=principal)
    ]


@router.get(
    "/{job_id}/logs", operation_id="read_job_logs", response_class=PlainTextResponse,
    responses={
        **_PROBLEMS, 416: _PROBLEMS[404],
        200: {"content": {"text/plain": {}}, "headers": {"X-Next-Offset": {"schema": {"type": "integer"}}}},
    },
)
def read_job_logs(
    job_id: str,
    session: SessionDep,
    artifacts: ArtifactsDep,
    principal: PrincipalDep,
    offset: Annotated[int, Query(ge=0, description="byte offset")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK_BYTES, description="bytes")] = 1024 * 1024,
) -> Response:
    """Log bytes from `offset`; pass `X-Next-Offset` back as `offset` to continue."""
    job = store_jobs.get_job(session, job_id, principal=principal)
    chunk = read_log(artifacts, job.id, offset=offset, limit=limit)
    return Response(
        content=chunk.data, media_type="text/plain; charset=utf-8", headers={"X-Next-Offset": str(chunk.next_offset)}
    )


@router.get(
    "/{job_id}/report", operation_id="read_job_report",
    responses={**_PROBLEMS, 200: {"content": {"application/json": {}, "text/markdown": {}}}},
)
def read_job_report(
    job_id: str, session: SessionDep, principal: PrincipalDep,
    fmt: Annotated[Literal["json", "md"], Query(alias="format")] = "json",
) -> Response:
    """The job's report (a dict of sections) as JSON, or rendered as Markdown with `?format=md`."""
    report = store_jobs.get_report(session, job_id, principal=principal)
    if fmt == "md" and report.get("kind") == JobKind.EVALUATION.value:  # the report's own rendering
        return Response(EvaluationReport.model_validate(report).to_markdown(), media_type="text/markdown")
    if fmt == "md" and report.get("kind") == JobKind.DIAGNOSTIC.value:  # checks table and verdict
        return Response(DiagnosticReport.model_validate(report).to_markdown(), media_type="text/markdown")
    if fmt == "md":
        return Response(render_markdown(report, title=f"Report of job {job_id}"), media_type="text/markdown")
    return Response(json.dumps(report), media_type="application/json")


@router.post(
    "/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, operation_id="cancel_job", responses=_PROBLEMS
)
def cancel_job(job_id: str, session: SessionDep, redis_client: RedisDep, principal: PrincipalDep) -> JobPublic:
    """Cooperative cancel: QUEUED → CANCELLED now, RUNNING → CANCELLING (the worker stops at its next step).
    Cancelling a sweep also cancels its unfinished trials."""
    job = store_jobs.request_cancel(session, job_id, principal=principal)
    children = store_jobs.cancel_children(session, job.id, principal=principal) if job.kind == JobKind.SWEEP else []
    for target in (job, *children):
        try:
            if target.state == JobState.CANCELLING:
                live.set_cancel_flag(redis_client, target.id)  # the worker also sees CANCELLING in its heartbeat
            live.publish_state(redis_client, target.id, JobState(target.state))
        except redis.RedisError as exc:
            log.warning("cancel of job %s recorded in the database; Redis signal failed: %s", target.id, exc)
    return to_job_public(store_jobs.get_job(session, job.id, principal=principal))


@router.get("/{job_id}/trials", operation_id="read_sweep_trials", responses=_PROBLEMS)
def read_sweep_trials(job_id: str, session: SessionDep, principal: PrincipalDep) -> TrialsPage:
    """A sweep's trials, by number: parameters, state, objective value and the child job that runs each;
    `best` is the best complete trial so far. 404 for a job that is not a sweep."""
    job = store_jobs.get_job(session, job_id, principal=principal)
    if job.kind != JobKind.SWEEP:
        raise NotASweep(job.id)
    config = SweepJobConfig.model_validate(job.config)
    children = store_queries.list_children(session, job.id, principal=principal)
    trials = sorted((t for c in children if (t := _trial(c, config))), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    sign = 1.0 if config.objective.direction == "maximize" else -1.0
    best = max(complete, key=lambda t: sign * (t.value or 0.0)) if complete else None
    return TrialsPage(sweep_id=job.id, objective=config.objective, trials=trials, best=best)


def _trial(child: JobRow, config: SweepJobConfig) -> TrialPublic | None:
    """A child job of a sweep as its trial (None for a child without a trial tag)."""
    number = trial_number(list(child.tags or []))
    if number is None:
        return None
    state = JobState(child.state)
    if state is JobState.SUCCEEDED:
        trial_state = TrialState.COMPLETE
    elif state is JobState.CANCELLED and child.failure_reason == FailureReason.PRUNED:
        trial_state = TrialState.PRUNED
    elif state.is_terminal():
        trial_state = TrialState.FAIL
    else:
        trial_state = TrialState.RUNNING
    raw = (child.latest_metrics or {}).get(config.objective.metric)
    params = {path: get_path(child.config, path) for path in config.space}
    return TrialPublic(number=number, params=params, state=trial_state,
                       value=TrialPublic.finite(None if raw is None else float(raw)), job_id=child.id,
                       job_state=child.state, links={"job": f"/v1/jobs/{child.id}"})


def check_init_from(session: SessionDep, body: Any, artifacts: ArtifactsDep, principal: PrincipalDep) -> None:
    """A training config (or a sweep's base) whose `init_from` names an earlier job must name one of the caller's
    training or diagnostic jobs, trained for the same system and weight shapes; an upload must be the caller's:
    422 naming the field otherwise. What an uploaded file holds is checked by the worker."""
    config: Any = body.config
    field = "config.init_from"
    if isinstance(config, SweepJobConfig):
        config = config.base.config_model().model_validate(config.base.config)
        field = "config.base.config.init_from"
    source = getattr(config, "init_from", None)
    if source is None:
        return
    if not isinstance(source, JobCheckpointSource):  # an upload: the caller's own; its contents the worker checks
        try:
            read_upload(artifacts, source.upload_id, principal=principal)
        except UploadNotFound as exc:
            raise InvalidReference(field, str(exc)) from exc
        return
    try:
        parent = store_jobs.get_job(session, source.job_id, principal=principal)
    except JobNotFound:
        raise InvalidReference(field, f"job {source.job_id} does not exist") from None
    if parent.kind not in (JobKind.TRAINING, JobKind.DIAGNOSTIC):
        raise InvalidReference(field, f"job {source.job_id} is a {parent.kind} job; it has no weights to start from")
    mismatch = init_mismatch(parent.config, config.model_dump(mode="json"))
    if mismatch is not None:
        raise InvalidReference(field, f"job {source.job_id}: {mismatch}")


@router.delete(
    "/{job_id}", status_code=status.HTTP_204_NO_CONTENT, operation_id="delete_job", responses=_PROBLEMS
)
def delete_job(job_id: str, session: SessionDep, artifacts: ArtifactsDep, principal: PrincipalDep) -> Response:
    """Delete a finished job with its metrics, checkpoints and logs (409 while it is not terminal)."""
    store_jobs.delete_job(session, job_id, principal=principal)
    artifacts.delete_job_files(job_id)  # after the rows: a failed removal leaves files, never a dangling row
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _render(value: Any, level: int) -> list[str]:
    """Markdown lines for one report value: scalars as text, flat dicts as key/value tables, lists of flat
    dicts as tables, lists of scalars as bullets, nested dicts as sub-sections."""
    if _is_scalar(value):
        return [_cell(value), ""]
    if isinstance(value, dict) and all(_is_scalar(v) for v in value.values()):
        return [*markdown_table(("key", "value"), ((_cell(k), _cell(v)) for k, v in value.items())), ""]
    if isinstance(value, dict):
        lines: list[str] = []
        for key, sub in value.items():
            lines += [f"{'#' * min(level, 6)} {key}", "", *_render(sub, level + 1)]
        return lines
    if value and all(isinstance(v, dict) and all(_is_scalar(x) for x in v.values()) for v in value):
        columns = list(dict.fromkeys(k for row in value for k in row))
        return [*markdown_table(columns, ([_cell(row.get(c, "")) for c in columns] for row in value)), ""]
    return [*(f"- {_cell(v)}" for v in value), ""]


def render_markdown(report: dict[str, Any], *, title: str) -> str:
    """A report (dict of sections) as Markdown; generic, knows nothing of any section's meaning."""
    lines = [f"# {title}", ""]
    for section, content in report.items():
        lines += [f"## {section}", "", *_render(content, 3)]
    return "\n".join(lines).rstrip() + "\n"
