"""Typed configs and wire types of ris-jobs (pydantic v2). Imports nothing of ours; no torch."""

from api_schemas.checkpoints import CheckpointInfo, CheckpointPublic
from api_schemas.config import (
    PARAM_GROUPS,
    DataConfig,
    DebugConfig,
    DiagnosticJobConfig,
    LossWeights,
    ModelConfig,
    PhaseConfig,
    SystemConfig,
    TrainingJobConfig,
    quickstart_diagnostic,
)
from api_schemas.jobs import (
    TERMINAL_STATES,
    DiagnosticJobCreate,
    Failure,
    FailureReason,
    JobCreate,
    JobEvent,
    JobKind,
    JobPublic,
    JobsPage,
    JobState,
    NonfiniteEvent,
    NonfiniteSummary,
    Progress,
    TrainingJobCreate,
)
from api_schemas.metrics import MetricPoint, MetricsPage, StoredMetricPoint, fold_nonfinite
from api_schemas.problems import FieldError, Problem
from api_schemas.reports import CheckResult, CheckStatus, DiagnosticReport, Verdict

__all__ = [
    "PARAM_GROUPS", "TERMINAL_STATES", "CheckResult", "CheckStatus", "CheckpointInfo", "CheckpointPublic", "DiagnosticReport", "Verdict", "DataConfig", "DebugConfig",
    "DiagnosticJobConfig", "DiagnosticJobCreate", "Failure", "FailureReason", "FieldError", "JobCreate",
    "JobEvent", "JobKind", "JobPublic", "JobState", "JobsPage", "LossWeights", "MetricPoint", "MetricsPage",
    "ModelConfig", "NonfiniteEvent", "NonfiniteSummary", "PhaseConfig", "Problem", "Progress",
    "StoredMetricPoint", "SystemConfig", "TrainingJobConfig", "TrainingJobCreate", "fold_nonfinite",
    "quickstart_diagnostic",
]
