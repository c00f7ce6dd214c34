"""Checkpoint metadata, as the trainer reports it and as the API lists it (SCIENCE.md, "The trainer"; ARCHITECTURE.md,
"HTTP API")."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

#: Names a checkpoint may have: letters, digits, '-', '_', '.'; never a path.
CHECKPOINT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class CheckpointInfo(BaseModel):
    """What the trainer's checkpoint writer produced; `path` is where the file lies on the worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=CHECKPOINT_NAME_PATTERN)
    phase: str
    epoch: int = Field(ge=0)
    step: int = Field(ge=0)
    path: str
    size: int = Field(ge=0, description="bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    is_final: bool = False


class CheckpointPublic(BaseModel):
    name: str
    phase: str
    epoch: int
    step: int
    size: int
    sha256: str
    created_at: datetime
    url: str


class CheckpointUploadPublic(BaseModel):
    """An uploaded checkpoint file (POST /v1/checkpoints): pass `upload_id` as an evaluation job's
    `config.checkpoint`. The file is validated (weights-only load) by the worker that evaluates it."""

    upload_id: str
    size: int = Field(description="bytes")
    sha256: str
    created_at: datetime
