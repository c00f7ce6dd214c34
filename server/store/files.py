"""The artifact directory on disk: every job's checkpoints, logs and output files (DESIGN §3.3).

Owns: `ArtifactStore` (layout `<root>/jobs/<id>/{checkpoints/, artifacts/, log.txt}`, path checks, and removal
of a job's files), the atomic write helper (temp file, sha256 while writing, fsync, `os.replace`), job artifact
paths (evaluation plots) and byte-offset log reads. Files only: no SQL, no FastAPI, no torch; the records of
checkpoints live in `server.store.artifacts`, above this module.

Safety: every path served or recorded is resolved inside the job's directory; absolute paths, `..` and
symlinks anywhere below the artifact root are refused (`ArtifactRejected`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from server.store.errors import ArtifactRejected, OffsetOutOfRange

if TYPE_CHECKING:
    from uuid import UUID

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_CHUNK_BYTES = 1024 * 1024
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

    def delete_job_files(self, job_id: str | UUID) -> None:
        """Remove the job's whole directory (checkpoints, artifacts, log); nothing to do if there is none."""
        job_dir = self.job_dir(job_id)
        if job_dir.is_symlink():
            raise ArtifactRejected(f"job directory of {job_id} is a symlink")
        if job_dir.exists():
            shutil.rmtree(job_dir)

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
