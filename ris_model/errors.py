"""Domain errors of ris_model. The worker's classify_failure maps them to FailureReason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class RisModelError(Exception):
    """Base class of ris_model's own errors."""


@dataclass
class NonFiniteAttribution:
    """Which step went non-finite, why, and what was involved (SCIENCE.md, "The trainer")."""

    phase: str
    epoch: int
    step: int
    cause: str  # one of api_schemas.metrics.NONFINITE_CAUSES
    loss_terms: list[str] = field(default_factory=list)
    param_groups: list[str] = field(default_factory=list)


class NonFiniteAbort(RisModelError):
    """Too many consecutive non-finite steps; carries the last attribution."""

    def __init__(self, message: str, attribution: NonFiniteAttribution) -> None:
        super().__init__(message)
        self.attribution = attribution
        self.report: dict[str, Any] | None = None  # a diagnostic job's verdict, when it aborted


class CheckpointError(RisModelError):
    """A checkpoint file is missing, truncated, foreign, or does not match the config."""
