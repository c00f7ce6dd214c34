"""Job wire types and the job state vocabulary (ARCHITECTURE.md, "The job state machine", "HTTP API").

Owns: JobKind, JobState, FailureReason, TERMINAL_STATES, JobCreate (+ per-kind bodies: diagnostic, training,
evaluation, sweep), JobPublic, JobsPage, Progress, NonfiniteSummary, Failure, JobEvent. Imports nothing of ours but
api_schemas; no torch. Every body takes `priority` and, but for a sweep's (its driver runs on the CPU, its trials
on the default resources), `resources` (api_schemas.resources) beside `config`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from api_schemas.config import DiagnosticJobConfig, TrainingJobConfig, quickstart_diagnostic
from api_schemas.evaluation import EvaluationJobConfig
from api_schemas.lineage import MAX_TAGS, Tag
from api_schemas.resources import DEFAULT_PRIORITY, DEFAULT_RESOURCES, PRIORITY_FIELD, Resources
from api_schemas.sweeps import SweepJobConfig


class JobKind(StrEnum):
    DIAGNOSTIC = "diagnostic"
    TRAINING = "training"
    EVALUATION = "evaluation"
    #: a hyper-parameter sweep: its driver creates one child training (or diagnostic) job per trial
    SWEEP = "sweep"


class JobState(StrEnum):
    #: committed, waiting for a worker
    QUEUED = "QUEUED"
    #: claimed by a worker that holds the lease
    RUNNING = "RUNNING"
    #: cancel requested; the worker stops at its next step
    CANCELLING = "CANCELLING"
    #: finished, final checkpoint recorded
    SUCCEEDED = "SUCCEEDED"
    #: ended with a failure_reason
    FAILED = "FAILED"
    #: ended by a cancel request
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


#: States with no way out; DELETE is allowed only here.
TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class FailureReason(StrEnum):
    USER_CONFIG = "USER_CONFIG"
    TRAINING_ERROR = "TRAINING_ERROR"
    NONFINITE_ABORT = "NONFINITE_ABORT"
    TIMEOUT = "TIMEOUT"
    WORKER_LOST = "WORKER_LOST"
    OOM = "OOM"
    INTERNAL = "INTERNAL"
    #: not a failure: a sweep's pruner stopped the trial early (the job ends CANCELLED with this reason)
    PRUNED = "PRUNED"


def _printable(value: str | None) -> str | None:
    """A job name is shown in listings, logs and reports: control characters (NUL, newline, escape, ...) are
    refused rather than stored."""
    if value is not None and any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValueError("must not contain NUL or other control characters")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str | None, AfterValidator(_printable)] = Field(
        None, max_length=200, description="free text without control characters"
    )
    max_attempts: int = Field(2, ge=1, le=5, description="attempts before a lost worker fails the job")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS,
                            description="short labels to find the job again (`GET /v1/jobs?tag=`)")
    priority: int = PRIORITY_FIELD


class DiagnosticJobCreate(_Body):
    kind: Literal["diagnostic"]
    preset: Literal["quickstart"] | None = Field(
        None, description="quickstart: a small diagnostic that finishes in about two minutes on a 2-core CPU "
        "(instead of `config`)")
    config: DiagnosticJobConfig = DiagnosticJobConfig()
    resources: Resources = DEFAULT_RESOURCES

    @model_validator(mode="after")
    def _apply_preset(self) -> DiagnosticJobCreate:
        if self.preset is None:
            return self
        if "config" in self.model_fields_set:
            raise ValueError("give either `preset` or `config`, not both")
        self.config = quickstart_diagnostic()
        return self


class TrainingJobCreate(_Body):
    kind: Literal["training"]
    config: TrainingJobConfig = TrainingJobConfig()
    resources: Resources = DEFAULT_RESOURCES


class EvaluationJobCreate(_Body):
    kind: Literal["evaluation"]
    config: EvaluationJobConfig  # no default: the checkpoint to evaluate is required
    resources: Resources = DEFAULT_RESOURCES

    @model_validator(mode="after")
    def _one_process(self) -> EvaluationJobCreate:
        if self.resources.gpus != 1:
            raise ValueError("an evaluation job runs one process: resources.gpus must be 1")
        return self


class SweepJobCreate(_Body):
    kind: Literal["sweep"]
    config: SweepJobConfig  # no default: the search space is required


#: The body of POST /v1/jobs; `kind` selects the config model, so errors name `config.<field>`.
JobCreate = Annotated[
    DiagnosticJobCreate | TrainingJobCreate | EvaluationJobCreate | SweepJobCreate, Field(discriminator="kind")
]


class Progress(BaseModel):
    phase: str | None = None
    epoch: int = 0
    step: int = 0
    fraction: float = Field(0.0, ge=0.0, le=1.0)


class NonfiniteEvent(BaseModel):
    """The last skipped step: where, why, and what was involved (SCIENCE.md, "The trainer")."""

    phase: str
    epoch: int
    step: int
    cause: str
    loss_terms: list[str] = []
    param_groups: list[str] = []


class NonfiniteSummary(BaseModel):
    total: int = 0
    by_phase: dict[str, int] = {}
    by_cause: dict[str, int] = {}
    by_loss_term: dict[str, int] = {}
    by_param_group: dict[str, int] = {}
    last: NonfiniteEvent | None = None


class Failure(BaseModel):
    reason: FailureReason
    message: str


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    name: str | None
    state: JobState
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    nonfinite_steps: NonfiniteSummary
    latest_metrics: dict[str, float]
    failure: Failure | None
    config: dict[str, Any]
    #: the processes and device the job asked for
    resources: Resources = DEFAULT_RESOURCES
    #: 0..9, 9 the most urgent
    priority: int = DEFAULT_PRIORITY
    #: why a QUEUED job is not running yet, when something is missing (e.g. "waiting for a cuda worker: …");
    #: null while it simply waits its turn, and once it runs
    waiting_reason: str | None = None
    links: dict[str, str]
    parent_id: str | None = Field(None, description="the sweep that created this job as one of its trials")
    tags: list[str] = []
    code_version: str | None = Field(None, description="package version (+g<commit> when known) that ran it")
    config_sha256: str | None = None


class JobsPage(BaseModel):
    items: list[JobPublic]
    next_page_token: str | None = None


class JobEvent(BaseModel):
    from_state: JobState | None
    to_state: JobState
    at: datetime
    message: str | None = None
