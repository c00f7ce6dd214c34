"""Exception → FailureReason: the one place that picks a job's failure reason
(ARCHITECTURE.md, "The job state machine").

Owns: `TrainerFailed` (marks an exception that escaped `ris_model.train.jobs.run_training_job`), `classify_failure`
and `failure_message`. Imports neither torch nor ris_model (the prefork parent imports this module): an
exception of theirs can only exist once they were imported, so the checks look the classes up in `sys.modules`.
"""

from __future__ import annotations

import errno
import re
import sys
import traceback

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from pydantic import ValidationError

from api_schemas import FailureReason

#: Characters of traceback kept in a job's log for a failure.
TRACEBACK_TAIL_CHARS = 4000


class TrainerFailed(Exception):
    """Wraps an exception raised inside the trainer, so that it is told apart from one of our own.

    `__cause__` is the trainer's exception. Anything the trainer raises that is not a known kind is a
    TRAINING_ERROR; anything raised outside it (store, Redis, our own bugs) is INTERNAL.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.__cause__ = cause


class UserInputRejected(Exception):
    """What the user supplied cannot be used (e.g. an evaluation's checkpoint is missing, foreign or holds
    code): the job ends FAILED USER_CONFIG with this message. `__cause__` is the underlying error, if any."""


def _is_nonfinite_abort(exc: BaseException) -> bool:
    errors = sys.modules.get("ris_model.errors")
    return errors is not None and isinstance(exc, errors.NonFiniteAbort)


def _is_out_of_memory(exc: BaseException) -> bool:
    """True for host MemoryError and torch's (CUDA) OutOfMemoryError."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    oom_types = tuple(
        t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t
    )
    return bool(oom_types) and isinstance(exc, oom_types)


#: errno values of an OSError that mean the artifact storage failed (full, read-only, not a directory, ...):
#: the service's problem, not the model's or its config's.
STORAGE_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
    errno.EFBIG, errno.EIO,
})


def _is_storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def _is_store_failure(exc: BaseException) -> bool:
    """True for database errors and our store's own errors (the job store failing is never the model's fault)."""
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.SQLAlchemyError):
        return True
    store_errors = sys.modules.get("server.store.errors")
    return store_errors is not None and isinstance(exc, store_errors.StoreError)


def classify_failure(exc: BaseException) -> FailureReason:
    """The failure reason for an exception that ended a job.

    Args:
        exc: the exception caught at the task boundary; a `TrainerFailed` wraps one raised by the trainer.

    Returns:
        NONFINITE_ABORT for `NonFiniteAbort`; OOM for torch's OutOfMemoryError and MemoryError; TIMEOUT for
        Celery's time limits; USER_CONFIG for `UserInputRejected` and for a pydantic ValidationError of the
        stored config (outside the trainer); TRAINING_ERROR for any other trainer exception (CheckpointError
        included) unless it is a store failure or an artifact-storage OSError (STORAGE_ERRNOS); INTERNAL for
        everything else.
    """
    if isinstance(exc, UserInputRejected):
        return FailureReason.USER_CONFIG
    in_trainer = isinstance(exc, TrainerFailed)
    inner = exc.__cause__ if in_trainer and exc.__cause__ is not None else exc
    if _is_nonfinite_abort(inner):
        return FailureReason.NONFINITE_ABORT
    if _is_out_of_memory(inner):
        return FailureReason.OOM
    if isinstance(inner, SoftTimeLimitExceeded | TimeLimitExceeded):
        return FailureReason.TIMEOUT
    if _is_store_failure(inner) or _is_storage_failure(inner):
        return FailureReason.INTERNAL
    if in_trainer:
        return FailureReason.TRAINING_ERROR
    if isinstance(inner, ValidationError):
        return FailureReason.USER_CONFIG
    return FailureReason.INTERNAL


def failure_message(exc: BaseException) -> str:
    """A one-line message for the job's `failure.message` (the trainer's own exception, when wrapped)."""
    if isinstance(exc, UserInputRejected):
        return scrub_paths(str(exc))[:2000]
    inner = exc.__cause__ if isinstance(exc, TrainerFailed) and exc.__cause__ is not None else exc
    text = str(inner).strip() or type(inner).__name__
    if isinstance(inner, OSError) and inner.errno in STORAGE_ERRNOS:
        text = f"artifact storage failed: {inner.strerror or text} ({inner.filename})"  # scrubbed to its name
    if isinstance(inner, SoftTimeLimitExceeded):
        text = ("the attempt passed its soft time limit before the trainer stopped by itself; "
                "the latest periodic checkpoint, if any, is downloadable")
    if isinstance(inner, ValidationError):
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in inner.errors())
        text = f"invalid stored config: {text}"
    return scrub_paths(f"{type(inner).__name__}: {text}")[:2000]


#: An absolute POSIX path of two or more parts (a server's file system layout is no business of the user's).
_ABSOLUTE_PATH_RE = re.compile(r"(?<![\w.:/])/(?:[\w.+@-]+/)+([\w.+@-]+)")


def scrub_paths(text: str) -> str:
    """`text` with every absolute path replaced by its last part (`/srv/artifacts/jobs/x/final.pt` →
    `final.pt`): failure messages are shown to users; the worker's log keeps the full paths."""
    return _ABSOLUTE_PATH_RE.sub(lambda m: m.group(1), text)


def traceback_tail(exc: BaseException) -> str:
    """The last TRACEBACK_TAIL_CHARS characters of the traceback of `exc` (of the trainer's own, when wrapped)."""
    inner = exc.__cause__ if isinstance(exc, TrainerFailed) and exc.__cause__ is not None else exc
    text = "".join(traceback.format_exception(inner))
    return text[-TRACEBACK_TAIL_CHARS:]
