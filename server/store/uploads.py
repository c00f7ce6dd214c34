"""Uploaded checkpoint files: stored by the API, validated by the worker that evaluates them.

Owns the layout `<ARTIFACT_DIR>/uploads/<upload id>.pt` (the bytes, written atomically) and `<upload id>.json`
(size, sha256, created_at, principal), `new_upload_id`, `write_upload`, `read_upload`, `upload_file` and
`delete_upload`. An upload belongs to the principal that posted it (`principal` = its owner id, as on jobs):
another principal gets UploadNotFound, as for an upload that does not exist; one that sees all sees every upload.
Must not import FastAPI or torch: the API never unpickles an upload. The worker loads it with
`torch.load(weights_only=True)` (`ris_model.train.checkpoint.load_checkpoint`) when an evaluation job runs, after
checking the sha256 recorded here.

Safety: an upload id is a 32-digit hex uuid (never a path); both files are resolved inside `uploads/` and
symlinks are refused.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from server.store.db import utcnow
from server.store.errors import ArtifactRejected, UploadNotFound
from server.store.files import ArtifactStore, FileDigest, HashingWriter, atomic_writer, file_sha256
from server.store.principals import Principal

UPLOADS_SUBDIR = "uploads"
UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")  # = api_schemas.evaluation.UPLOAD_ID_PATTERN


@dataclass(frozen=True)
class UploadRecord:
    upload_id: str
    size: int  # bytes
    sha256: str  # hex
    created_at: str  # ISO 8601, UTC
    principal: str | None


def new_upload_id() -> str:
    return uuid.uuid4().hex


def _paths(store: ArtifactStore, upload_id: str) -> tuple[Path, Path]:
    """(data file, metadata file) of an upload; refuses ids that are not ours and symlinked paths."""
    if not UPLOAD_ID_RE.match(upload_id):
        raise ArtifactRejected(f"not an upload id: {upload_id!r}")
    directory = store.root / UPLOADS_SUBDIR
    if directory.is_symlink():
        raise ArtifactRejected("the uploads directory is a symlink")
    data, meta = directory / f"{upload_id}.pt", directory / f"{upload_id}.json"
    if data.is_symlink() or meta.is_symlink():
        raise ArtifactRejected(f"upload {upload_id} is a symlink")
    return data, meta


@contextmanager
def write_upload(store: ArtifactStore, upload_id: str) -> Iterator[HashingWriter]:
    """Write the bytes of upload `upload_id` atomically (a temp file beside it, fsync, rename).

    If the block raises (too large, client gone), nothing is left behind. Call `record_upload` afterwards.
    """
    data, _ = _paths(store, upload_id)
    with atomic_writer(data) as writer:
        yield writer


def record_upload(store: ArtifactStore, upload_id: str, digest: FileDigest, *, principal: Principal
                  ) -> UploadRecord:
    """Write the upload's metadata (atomically) once its bytes are in place; returns the record."""
    _, meta = _paths(store, upload_id)
    record = UploadRecord(upload_id=upload_id, size=digest.size, sha256=digest.sha256,
                          created_at=utcnow().isoformat(), principal=principal.owner)
    with atomic_writer(meta) as writer:
        writer.write(json.dumps(asdict(record)).encode())
    return record


def read_upload(store: ArtifactStore, upload_id: str, *, principal: Principal) -> UploadRecord:
    """The record of an upload `principal` may see. Raises UploadNotFound (no such upload, another principal's,
    or an unsafe id)."""
    try:
        data, meta = _paths(store, upload_id)
        raw = json.loads(meta.read_text())
    except (ArtifactRejected, OSError, ValueError) as exc:
        raise UploadNotFound(upload_id) from exc
    if not data.is_file():
        raise UploadNotFound(upload_id)
    record = UploadRecord(**{k: raw.get(k) for k in UploadRecord.__dataclass_fields__})
    if not principal.sees_all and record.principal != principal.owner:
        raise UploadNotFound(upload_id)
    return record


def upload_file(store: ArtifactStore, upload_id: str, *, principal: Principal) -> Path:
    """The upload's data file, after checking that its size and sha256 still match the record.

    Raises:
        UploadNotFound: no such upload. ArtifactRejected: the file changed since it was uploaded.
    """
    record = read_upload(store, upload_id, principal=principal)
    data, _ = _paths(store, upload_id)
    digest = file_sha256(data)
    if (digest.size, digest.sha256) != (record.size, record.sha256):
        raise ArtifactRejected(f"upload {upload_id} does not match its recorded size/sha256; upload it again")
    return data


def delete_upload(store: ArtifactStore, upload_id: str, *, principal: Principal) -> None:
    """Remove an upload `principal` may see (its bytes, then its record). Raises UploadNotFound.

    An evaluation job that names it later fails at submit (422); one already running has resolved its file."""
    read_upload(store, upload_id, principal=principal)
    data, meta = _paths(store, upload_id)
    data.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
