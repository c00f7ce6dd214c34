"""The artifact store: every job's checkpoints, log and output files, and uploads, as objects (ARCHITECTURE.md,
"Artifacts, queues and several machines").

Owns: `ArtifactStore` (the key layout `jobs/<id>/{checkpoints/<name>.<sha16>.pt, artifacts/<name>, log.txt}` and
`uploads/…` on an `ObjectStore`, key checks, checkpoint upload and download with sha256 checks, removal of a
job's objects), job artifact keys (evaluation plots) and byte-offset log reads. Bytes only: no SQL, no FastAPI,
no torch; the records of checkpoints live in `server.store.artifacts`, above this module.

Where the bytes live is ARTIFACT_URL (a directory by default: ARTIFACT_DIR; or `s3://bucket/prefix`): see
`server.store.objects`. Workers never write into the store directly: the trainer writes to the worker's local
scratch directory, and the worker uploads each file through `put_checkpoint` before it records it.

Safety: job ids and relative paths are checked before they become keys; absolute paths, `..` and (on a
directory store) symlinks anywhere below the root are refused (`ArtifactRejected`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from api_schemas import CheckpointInfo
from server.store.errors import ArtifactRejected, OffsetOutOfRange
from server.store.objects import (
    CHUNK_BYTES,
    FileDigest,
    HashingWriter,
    LocalObjectStore,
    ObjectInfo,
    ObjectStore,
    check_key,
    file_digest,
    open_object_store,
)

if TYPE_CHECKING:
    from uuid import UUID

__all__ = [
    "ARTIFACT_MEDIA_TYPES", "ARTIFACT_NAME_PATTERN", "JOB_ARTIFACTS_SUBDIR", "JOBS_PREFIX", "LOG_NAME", "ArtifactStore",
    "FileDigest", "HashingWriter", "LocalObjectStore", "LogChunk", "ObjectInfo", "ObjectStore", "artifact_key",
    "artifact_object", "file_digest", "read_log",
]

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
JOBS_PREFIX = "jobs"
LOG_NAME = "log.txt"
CHECKPOINTS_SUBDIR = "checkpoints"
#: A job's downloadable output files (evaluation plots and report) lie at `jobs/<id>/artifacts/<name>`.
JOB_ARTIFACTS_SUBDIR = "artifacts"
#: Names of downloadable job artifacts: one plain file name with a known extension; never a path.
ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}\.(png|json|md|tfevents)$"
#: tfevents: TensorBoard event records (TFRecord), worker/tensorboard_export.py
ARTIFACT_MEDIA_TYPES = {"png": "image/png", "json": "application/json", "md": "text/markdown; charset=utf-8",
                        "tfevents": "application/octet-stream"}


class ArtifactStore:
    """The key layout of ris-jobs on one ObjectStore. Holds no state but the store."""

    def __init__(self, location: ObjectStore | Path | str) -> None:
        self.objects = location if isinstance(location, ObjectStore) else open_object_store(location)

    # -- keys --

    def job_prefix(self, job_id: str | UUID) -> str:
        """`jobs/<id>`; refuses ids that could name another key."""
        jid = str(job_id)
        if not _JOB_ID_RE.match(jid):
            raise ArtifactRejected(f"not a job id: {jid!r}")
        return f"{JOBS_PREFIX}/{jid}"

    def job_key(self, job_id: str | UUID, relpath: str) -> str:
        """The key of `relpath` inside the job's prefix, refusing absolute paths and traversal."""
        rel = PurePosixPath(relpath)
        if not relpath or rel.is_absolute() or ".." in rel.parts or "\\" in relpath:
            raise ArtifactRejected(f"not a relative artifact path: {relpath!r}")
        return check_key(f"{self.job_prefix(job_id)}/{relpath}")

    def log_key(self, job_id: str | UUID) -> str:
        """The job's log (uploaded by the worker as it grows; read by byte offset)."""
        return self.job_key(job_id, LOG_NAME)

    @staticmethod
    def checkpoint_relpath(name: str, sha256: str) -> str:
        """Where a checkpoint's bytes go, relative to the job: named by its content, so that a checkpoint
        rewritten under the same name never replaces the object an older record points at."""
        return f"{CHECKPOINTS_SUBDIR}/{name}.{sha256[:16]}.pt"

    # -- objects --

    def stat(self, job_id: str | UUID, relpath: str) -> ObjectInfo | None:
        return self.objects.stat(self.job_key(job_id, relpath))

    def put_checkpoint(self, job_id: str | UUID, info: CheckpointInfo) -> CheckpointInfo:
        """Upload the checkpoint file at `info.path` (the worker's scratch) to the store; returns `info` with
        `path` = its key relative to the job.

        Raises:
            ArtifactRejected: the bytes sent are not those the trainer reported (size or sha256 differ).
            OSError and the store's errors: the upload failed (nothing was committed, or an orphan is left).
        """
        relpath = self.checkpoint_relpath(info.name, info.sha256)
        sent = self.objects.put_file(Path(info.path), self.job_key(job_id, relpath))
        if (sent.size, sent.sha256) != (info.size, info.sha256):
            self.objects.delete(self.job_key(job_id, relpath))
            raise ArtifactRejected(f"checkpoint {info.name}: {info.path} changed after it was written "
                                   f"({sent.size} bytes, sha256 {sent.sha256[:12]}…; reported {info.size}, "
                                   f"{info.sha256[:12]}…)")
        return info.model_copy(update={"path": relpath})

    def fetch(self, key: str, dest: Path, *, sha256: str | None = None) -> Path:
        """Download `key` to the local file `dest`, checking its sha256 when one is given.

        Raises:
            FileNotFoundError: no such object. ArtifactRejected: the bytes differ from `sha256`.
        """
        got = self.objects.get_file(key, dest)
        if sha256 is not None and got.sha256 != sha256:
            dest.unlink(missing_ok=True)
            raise ArtifactRejected(f"{key}: sha256 {got.sha256[:12]}… differs from the record's {sha256[:12]}…")
        return dest

    def delete_job_files(self, job_id: str | UUID) -> None:
        """Remove every object of the job (checkpoints, artifacts, log); nothing to do if there is none."""
        self.objects.delete_prefix(self.job_prefix(job_id))


# ---------------------------------------------------------------------------------------------- job artifacts


def artifact_key(store: ArtifactStore, job_id: str | UUID, name: str) -> str:
    """The key of the job artifact `name` (checked: name pattern, no traversal).

    Raises:
        ArtifactRejected: `name` is not an artifact name.
    """
    if not re.match(ARTIFACT_NAME_PATTERN, name):
        raise ArtifactRejected(f"not an artifact name: {name!r}")
    return store.job_key(job_id, f"{JOB_ARTIFACTS_SUBDIR}/{name}")


def artifact_object(store: ArtifactStore, job_id: str | UUID, name: str) -> tuple[ObjectInfo, str]:
    """An existing job artifact to serve, and its media type.

    Raises:
        ArtifactRejected (served as 404): bad name, unsafe key, or no such object.
    """
    info = store.objects.stat(artifact_key(store, job_id, name))
    if info is None:
        raise ArtifactRejected(f"job {job_id} has no artifact {name!r}")
    return info, ARTIFACT_MEDIA_TYPES[name.rsplit(".", 1)[1]]


# ---------------------------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    next_offset: int  # bytes; pass back as ?offset= to continue


def read_log(store: ArtifactStore, job_id: str | UUID, *, offset: int = 0, limit: int = CHUNK_BYTES) -> LogChunk:
    """Up to `limit` bytes of the job's log from byte `offset`. A missing log reads as empty.

    Raises:
        OffsetOutOfRange: `offset` is past the end of the log. ValueError: negative offset or limit < 1.
        ArtifactRejected: unsafe job id or key.
    """
    if offset < 0 or limit < 1:
        raise ValueError("offset must be >= 0 and limit >= 1")
    key = store.log_key(job_id)
    info = store.objects.stat(key)
    size = 0 if info is None else info.size
    if offset > size:
        raise OffsetOutOfRange(offset, size)
    if info is None or offset == size:
        return LogChunk(data=b"", next_offset=offset)
    try:
        data = store.objects.read_range(key, offset, min(size, offset + limit))
    except FileNotFoundError:  # deleted between stat and read
        data = b""
    return LogChunk(data=data, next_offset=offset + len(data))
