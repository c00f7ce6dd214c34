"""Domain errors of the job store. Only `server/errors.py` maps them to HTTP problems.

Must not import FastAPI; the worker catches these too.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error."""


class JobNotFound(StoreError):
    """No job has this id (HTTP 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class NotASweep(JobNotFound):
    """The job exists but is not a sweep, so it has no trials (HTTP 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.args = (f"job {job_id} is not a sweep; it has no trials",)


class InvalidTransition(StoreError):
    """Current state does not allow the target (HTTP 409)."""

    def __init__(self, job_id: str, current: str | None, target: str, detail: str | None = None) -> None:
        text = f"job {job_id} cannot go from {current} to {target}"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.job_id = job_id
        self.current = current
        self.target = target


class LeaseLost(StoreError):
    """The caller's lease token no longer owns the job (another attempt holds it, or the job ended)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"lease on job {job_id} lost")
        self.job_id = job_id


class CheckpointNotFound(StoreError):
    """No checkpoint of this name, or its file is gone (HTTP 404)."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(f"job {job_id} has no checkpoint {name!r}")
        self.job_id = job_id
        self.name = name


class ReportNotFound(StoreError):
    """The job has no report (yet) (HTTP 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} has no report yet")
        self.job_id = job_id


class ArtifactRejected(StoreError):
    """A path escapes the job's artifact directory, is a symlink, or does not match its record."""


class IdempotencyConflict(StoreError):
    """An Idempotency-Key was reused with a different request body (HTTP 422)."""

    def __init__(self, key: str) -> None:
        super().__init__("Idempotency-Key was already used with a different request body")
        self.key = key


class InvalidCursor(StoreError):
    """A page token is not one this store issued (HTTP 422)."""


class OffsetOutOfRange(StoreError):
    """A log offset lies past the end of the log (HTTP 416)."""

    def __init__(self, offset: int, size: int) -> None:
        super().__init__(f"offset {offset} is past the end of the log ({size} bytes)")
        self.offset = offset
        self.size = size


class UploadNotFound(StoreError):
    """No uploaded checkpoint has this id (HTTP 404; an evaluation job that names it fails USER_CONFIG)."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"no uploaded checkpoint {upload_id!r} (POST the file to /v1/checkpoints first)")
        self.upload_id = upload_id


class ArtifactUploadFailed(StoreError):
    """The artifact store did not take an object (after retries): the store's problem, never the job's."""
