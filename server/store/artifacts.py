"""The artifact directory: checkpoints and logs of each job (DESIGN §3.3, jobserver_notes §6.5).

Owns: `ArtifactStore` (layout `<root>/jobs/<id>/{checkpoints/, artifacts/, log.txt}` and path checks), the
atomic write helper (temp file, sha256 while writing, fsync, `os.replace`), checkpoint records (register, list,
get with the `final`/`latest` aliases), job artifact paths (evaluation plots) and byte-offset log reads. Must
not import FastAPI or torch.

Safety: every path served or recorded is resolved inside the job's directory; absolute paths, `..` and
symlinks anywhere below the artifact root are refused (`ArtifactRejected`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_schemas import CheckpointInfo
from api_schemas.checkpoints import CHECKPOINT_NAME_PATTERN
from server.store.db import utcnow
from server.store.errors import ArtifactRejected, CheckpointNotFound, OffsetOutOfRange
from server.store.job_queries import latest_resume_checkpoint
from server.store.jobs import begin_write, fenced_update, get_job
from server.store.models import CheckpointRow

if TYPE_CHECKING:
    from uuid import UUID

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_CHUNK_BYTES = 1024 * 1024
#: Checkpoint-name aliases: `final` (the run's final checkpoint) and `latest` (highest step).
FINAL, LATEST = "final", "latest"
#: A job's downloadable output files (evaluation plots and report) lie in `<job dir>/artifacts/<name>`.
JOB_ARTIFACTS_SUBDIR = "artifacts"
#: Names of downloadable job artifacts: one plain file name with a known extension; never a path.
ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}\.(png|json|md|tfevents)$"
#: tfevents: TensorBoard event records (TFRecord), worker/tensorboard_export.py
ARTIFACT_MEDIA_TYPES = {"png": "image/png", "json": "application/json", "md": "text/markdown; charset=utf-8",
                        "tfevents": "application/octet-stream"}


class ArtifactStore:
    """Paths of one artifact root (ARTIFACT_DIR). Holds no state but the canonical root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.realpath(root))

    def job_dir(self, job_id: str | UUID) -> Path:
        """`<root>/jobs/<id>`; refuses ids that could name another path."""
        jid = str(job_id)
        if not _JOB_ID_RE.match(jid):
            raise ArtifactRejected(f"not a job id: {jid!r}")
        return self.root / "jobs" / jid

    def checkpoint_dir(self, job_id: str | UUID) -> Path:
        """Where the trainer writes this job's checkpoint files."""
        return self.job_dir(job_id) / "checkpoints"

    def log_path(self, job_id: str | UUID) -> Path:
        """The job's append-only log (read by byte offset)."""
        return self.job_dir(job_id) / "log.txt"

    def ensure_job_dirs(self, job_id: str | UUID) -> Path:
        """Create the job's directory and its checkpoints/ (idempotent); returns the job directory."""
        self.checkpoint_dir(job_id).mkdir(parents=True, exist_ok=True)
        return self.job_dir(job_id)

    def resolve(self, job_id: str | UUID, relpath: str) -> Path:
        """The path of `relpath` inside the job directory, refusing traversal and symlinks.

        Raises:
            ArtifactRejected: absolute path, a `..` part, a symlink on the way, or a path outside the job dir.
        """
        rel = PurePosixPath(relpath)
        if not relpath or rel.is_absolute() or ".." in rel.parts or "\\" in relpath:
            raise ArtifactRejected(f"not a relative artifact path: {relpath!r}")
        job_dir = self.job_dir(job_id)
        current = self.root
        for part in (*job_dir.relative_to(self.root).parts, *rel.parts):
            current = current / part
            if current.is_symlink():
                raise ArtifactRejected(f"symlink in artifact path: {relpath!r}")
        if not Path(os.path.realpath(current)).is_relative_to(job_dir):
            raise ArtifactRejected(f"artifact path escapes the job directory: {relpath!r}")
        return current

    def relative_path(self, job_id: str | UUID, path: str | Path) -> str:
        """`path` (absolute, as the worker wrote it) relative to the job directory, checked by `resolve`."""
        absolute = Path(os.path.abspath(path))  # normalizes `..` without following symlinks
        try:
            rel = absolute.relative_to(self.job_dir(job_id))
        except ValueError as exc:
            raise ArtifactRejected(f"{path} is not inside {self.job_dir(job_id)}") from exc
        self.resolve(job_id, rel.as_posix())
        return rel.as_posix()


# ---------------------------------------------------------------------------------------------- atomic writes


@dataclass(frozen=True)
class FileDigest:
    size: int  # bytes
    sha256: str  # hex


class HashingWriter:
    """A binary file wrapper that counts bytes and updates a sha256 on every write."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def digest(self) -> FileDigest:
        return FileDigest(size=self.size, sha256=self._hash.hexdigest())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path) -> Iterator[HashingWriter]:
    """Write `path` atomically: a temp file beside it, fsync, `os.replace`, fsync of the directory.

    Readers never see a partial file; if the block raises, the temp file is removed and `path` is untouched.
    After the block, `writer.digest()` gives the size and sha256 of what was written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    done = False
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = HashingWriter(raw)
            yield writer
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_name, path)
        done = True
        _fsync_dir(path.parent)
    finally:
        if not done and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> FileDigest:
    """Write `data` (bytes or chunks) to `path` atomically; returns its size (bytes) and sha256."""
    with atomic_writer(path) as writer:
        for chunk in [data] if isinstance(data, bytes) else data:
            writer.write(chunk)
    return writer.digest()


def file_sha256(path: Path) -> FileDigest:
    """Size (bytes) and sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size=size, sha256=digest.hexdigest())


# ---------------------------------------------------------------------------------------------- checkpoints


def register_checkpoint(
    session: Session, job_id: str | UUID, info: CheckpointInfo, *, lease_token: str, store: ArtifactStore,
    code_version: str | None = None, config_sha256: str | None = None,
) -> CheckpointRow:
    """Record a checkpoint file the worker wrote (fenced by the lease; renews it); commits.

    The file must lie inside the job's artifact directory, be a regular file (no symlink) and have
    `info.size` bytes. A checkpoint with the same name is replaced (e.g. rewritten after a resume).
    `code_version` and `config_sha256` record the code and the config that produced the weights.

    Raises:
        ArtifactRejected (bad path or size), JobNotFound, LeaseLost.
    """
    jid = str(job_id)
    rel = store.relative_path(jid, info.path)
    path = store.resolve(jid, rel)
    if not path.is_file():
        raise ArtifactRejected(f"checkpoint file {info.path} does not exist or is not a regular file")
    size = path.stat().st_size
    if size != info.size:
        raise ArtifactRejected(f"checkpoint {info.name}: file has {size} bytes, record says {info.size}")
    begin_write(session)
    now = utcnow()
    fenced_update(session, jid, lease_token=lease_token, values={"heartbeat_at": now})
    row = session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == jid, CheckpointRow.name == info.name)
    ).first()
    if row is None:
        row = CheckpointRow(job_id=jid, name=info.name)
        session.add(row)
    row.phase, row.epoch, row.step, row.path = info.phase, info.epoch, info.step, rel
    row.size, row.sha256, row.is_final, row.created_at = info.size, info.sha256, info.is_final, now
    row.code_version, row.config_sha256 = code_version, config_sha256
    session.commit()
    return row


def list_checkpoints(session: Session, job_id: str | UUID) -> list[CheckpointRow]:
    """The job's checkpoints by step, then creation time. Raises JobNotFound."""
    get_job(session, job_id)
    return list(session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == str(job_id))
        .order_by(CheckpointRow.step, CheckpointRow.created_at, CheckpointRow.id)
    ))


def get_checkpoint(session: Session, job_id: str | UUID, name: str) -> CheckpointRow:
    """The checkpoint called `name`; `final` = the final checkpoint, `latest` = the highest step.

    Aliases win over a checkpoint literally named `latest`; for `final`, a checkpoint flagged final wins,
    else one named `final`.

    Raises:
        JobNotFound; CheckpointNotFound (no such checkpoint, or `name` is not a valid checkpoint name).
    """
    jid = str(job_id)
    get_job(session, jid)
    if not re.match(CHECKPOINT_NAME_PATTERN, name):
        raise CheckpointNotFound(jid, name)
    row: CheckpointRow | None
    if name == LATEST:
        row = latest_resume_checkpoint(session, jid)
    else:
        stmt = select(CheckpointRow).where(CheckpointRow.job_id == jid)
        if name == FINAL:
            stmt = stmt.where(CheckpointRow.is_final | (CheckpointRow.name == FINAL)).order_by(
                CheckpointRow.is_final.desc(), CheckpointRow.created_at.desc()
            )
        else:
            stmt = stmt.where(CheckpointRow.name == name)
        row = session.scalars(stmt.limit(1)).first()
    if row is None:
        raise CheckpointNotFound(jid, name)
    return row


def checkpoint_file(store: ArtifactStore, row: CheckpointRow) -> Path:
    """The checkpoint's file, checked (inside the job dir, no symlink, exists).

    Raises:
        CheckpointNotFound: the file is gone or its recorded path is unsafe.
    """
    try:
        path = store.resolve(row.job_id, row.path)
    except ArtifactRejected as exc:
        raise CheckpointNotFound(row.job_id, row.name) from exc
    if not path.is_file():
        raise CheckpointNotFound(row.job_id, row.name)
    return path


# ---------------------------------------------------------------------------------------------- job artifacts


def artifact_path(store: ArtifactStore, job_id: str | UUID, name: str) -> Path:
    """Where the worker writes the job artifact `name` (checked: name pattern, no traversal, no symlink).

    Raises:
        ArtifactRejected: `name` is not an artifact name, or the path is unsafe.
    """
    if not re.match(ARTIFACT_NAME_PATTERN, name):
        raise ArtifactRejected(f"not an artifact name: {name!r}")
    return store.resolve(job_id, f"{JOB_ARTIFACTS_SUBDIR}/{name}")


def artifact_file(store: ArtifactStore, job_id: str | UUID, name: str) -> tuple[Path, str]:
    """An existing job artifact to serve, and its media type.

    Raises:
        ArtifactRejected (served as 404): bad name, unsafe path, or no such regular file.
    """
    path = artifact_path(store, job_id, name)
    if not path.is_file() or path.is_symlink():
        raise ArtifactRejected(f"job {job_id} has no artifact {name!r}")
    return path, ARTIFACT_MEDIA_TYPES[name.rsplit(".", 1)[1]]


# ---------------------------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    next_offset: int  # bytes; pass back as ?offset= to continue


def read_log(store: ArtifactStore, job_id: str | UUID, *, offset: int = 0, limit: int = _CHUNK_BYTES) -> LogChunk:
    """Up to `limit` bytes of the job's log from byte `offset`. A missing log reads as empty.

    Raises:
        OffsetOutOfRange: `offset` is past the end of the log. ValueError: negative offset or limit < 1.
    """
    if offset < 0 or limit < 1:
        raise ValueError("offset must be >= 0 and limit >= 1")
    try:
        path = store.resolve(job_id, "log.txt")
        f = path.open("rb")
    except FileNotFoundError:
        if offset > 0:
            raise OffsetOutOfRange(offset, 0) from None
        return LogChunk(data=b"", next_offset=0)
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            raise OffsetOutOfRange(offset, size)
        f.seek(offset)
        data = f.read(limit)
    return LogChunk(data=data, next_offset=offset + len(data))
