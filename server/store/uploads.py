"""Uploaded checkpoint files: stored by the API, validated by the worker that evaluates them.

Owns the layout `uploads/<upload id>.pt` (the bytes, written under a temporary key and committed) and
`uploads/<upload id>.json` (size, sha256, created_at, principal; written once the bytes are in place), in the
artifact store, `new_upload_id`, `write_upload`, `read_upload`, `upload_object` and `delete_upload`. An upload
belongs to the principal that posted it (`principal` = its owner id, as on jobs): another principal gets
UploadNotFound, as for an upload that does not exist; one that sees all sees every upload. Must not import FastAPI
or torch: the API never unpickles an upload. The worker downloads it, checks the sha256 recorded here, and loads
it with `torch.load(weights_only=True)` (`ris_model.train.checkpoint.load_checkpoint`) when an evaluation job runs.

Safety: an upload id is a 32-digit hex uuid (never a path), so both keys stay inside `uploads/`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from server.store.db import utcnow
from server.store.errors import ArtifactRejected, UploadNotFound
from server.store.files import ArtifactStore, FileDigest, HashingWriter
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


def _keys(upload_id: str) -> tuple[str, str]:
    """(data key, metadata key) of an upload; refuses ids that are not ours."""
    if not UPLOAD_ID_RE.match(upload_id):
        raise ArtifactRejected(f"not an upload id: {upload_id!r}")
    return f"{UPLOADS_SUBDIR}/{upload_id}.pt", f"{UPLOADS_SUBDIR}/{upload_id}.json"


@contextmanager
def write_upload(store: ArtifactStore, upload_id: str) -> Iterator[HashingWriter]:
    """Write the bytes of upload `upload_id` under a temporary key, committed when the block ends.

    If the block raises (too large, client gone), nothing is committed. Call `record_upload` afterwards.
    """
    data, _ = _keys(upload_id)
    with store.objects.open_write(data) as writer:
        yield writer


def record_upload(store: ArtifactStore, upload_id: str, digest: FileDigest, *, principal: Principal
                  ) -> UploadRecord:
    """Write the upload's metadata once its bytes are in place; returns the record."""
    _, meta = _keys(upload_id)
    record = UploadRecord(upload_id=upload_id, size=digest.size, sha256=digest.sha256,
                          created_at=utcnow().isoformat(), principal=principal.owner)
    store.objects.write(meta, json.dumps(asdict(record)).encode())
    return record


def read_upload(store: ArtifactStore, upload_id: str, *, principal: Principal) -> UploadRecord:
    """The record of an upload `principal` may see. Raises UploadNotFound (no such upload, another principal's,
    or an unsafe id)."""
    try:
        data, meta = _keys(upload_id)
        raw = json.loads(store.objects.read_range(meta, 0, 1 << 20))
    except (ArtifactRejected, OSError, ValueError) as exc:
        raise UploadNotFound(upload_id) from exc
    if store.objects.stat(data) is None:
        raise UploadNotFound(upload_id)
    record = UploadRecord(**{k: raw.get(k) for k in UploadRecord.__dataclass_fields__})
    if not principal.sees_all and record.principal != principal.owner:
        raise UploadNotFound(upload_id)
    return record


def upload_object(store: ArtifactStore, upload_id: str, *, principal: Principal) -> tuple[str, UploadRecord]:
    """The upload's data key and record, after checking that the object still has the recorded size (the
    sha256 is checked by whoever downloads it: `ArtifactStore.fetch(key, dest, sha256=record.sha256)`).

    Raises:
        UploadNotFound: no such upload. ArtifactRejected: the object changed since it was uploaded.
    """
    record = read_upload(store, upload_id, principal=principal)
    data, _ = _keys(upload_id)
    info = store.objects.stat(data)
    if info is None or info.size != record.size:
        raise ArtifactRejected(f"upload {upload_id} does not match its recorded size; upload it again")
    return data, record


def delete_upload(store: ArtifactStore, upload_id: str, *, principal: Principal) -> None:
    """Remove an upload `principal` may see (its bytes, then its record). Raises UploadNotFound.

    An evaluation job that names it later fails at submit (422); one already running has downloaded its file."""
    read_upload(store, upload_id, principal=principal)
    data, meta = _keys(upload_id)
    store.objects.delete(data)
    store.objects.delete(meta)
