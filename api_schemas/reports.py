"""The diagnostic verdict as a wire type, and its Markdown rendering (ARCHITECTURE.md, "HTTP API", /report).

Owns CheckStatus, CheckResult, Verdict, DiagnosticReport. Pure Python (no torch), so the API can render it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from api_schemas.evaluation import EvaluationArtifact
from api_schemas.markdown import markdown_table


class CheckStatus(StrEnum):
    """A check's outcome. SKIP: the run's budget (scenes, epochs, probe steps) is too small for the check to
    judge; its summary says why. A SKIP never makes the verdict WARN or FAIL."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


class CheckResult(BaseModel):
    id: int
    name: str
    status: CheckStatus
    summary: str
    evidence: dict[str, Any] = {}
    next_step: str = ""


class Verdict(BaseModel):
    status: CheckStatus
    decision: str  # "proceed to three-phase training" or the specific next step
    reasons: list[str] = []


class DiagnosticReport(BaseModel):
    kind: str = "diagnostic"
    verdict: Verdict
    checks: list[CheckResult]
    timing_s: dict[str, float] = {}
    #: the run's plots (loss curves, K accuracy per epoch), written by the worker once the run has finished
    artifacts: list[EvaluationArtifact] = []

    def to_markdown(self) -> str:
        lines = [
            "# Diagnostic report", "",
            f"**Verdict: {self.verdict.status}** — {self.verdict.decision}", "",
        ]
        lines += [f"- {r}" for r in self.verdict.reasons]
        lines += ["", *markdown_table(("#", "check", "status", "summary"),
                                      ((str(c.id), c.name, str(c.status), c.summary) for c in self.checks))]
        for c in self.checks:
            lines += ["", f"## {c.id}. {c.name} — {c.status}", "", c.summary]
            if c.next_step:
                lines += ["", f"*Next:* {c.next_step}"]
            if c.evidence:
                lines += ["", "```json", json.dumps(c.evidence, indent=2, default=str), "```"]
        if self.artifacts:
            lines += ["", "## Plots", ""]
            lines += [f"- [{a.name}]({a.url or a.name}) ({a.size} bytes)" for a in self.artifacts]
        if self.timing_s:
            lines += ["", "## Timing (s)", ""] + [f"- {k}: {v:.3f}" for k, v in self.timing_s.items()]
        return "\n".join(lines) + "\n"
