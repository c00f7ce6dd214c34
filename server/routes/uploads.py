"""Checkpoint uploads: `POST /v1/checkpoints` stores a checkpoint file for evaluation jobs.

The body is the raw file (`Content-Type: application/octet-stream`, at most MAX_UPLOAD_BYTES; the request
guard enforces both). It is streamed to the artifact store's `uploads/<id>.pt` (a temporary key, committed once
complete) with its sha256; nothing is unpickled here (the API process never imports torch). The worker
validates the file with a weights-only load when an evaluation job uses it, so a file that holds code fails
that job (USER_CONFIG) without running.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from api_schemas import CheckpointUploadPublic
from server.deps import ArtifactsDep, PrincipalDep
from server.errors import problem_responses
from server.store.uploads import (
    UploadRecord,
    delete_upload,
    new_upload_id,
    read_upload,
    record_upload,
    write_upload,
)

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])
UPLOAD_PATH = "/v1/checkpoints"
#: A torch checkpoint (torch.save's default since 1.6) is a zip archive.
_ZIP_MAGIC = b"PK\x03\x04"
_PROBLEMS = problem_responses(401, 413, 415, 422)
_READ_PROBLEMS = problem_responses(401, 404)


@router.post(
    "", status_code=status.HTTP_201_CREATED, operation_id="create_checkpoint_upload", responses=_PROBLEMS,
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}},
)
async def create_checkpoint_upload(
    request: Request, response: Response, artifacts: ArtifactsDep, principal: PrincipalDep
) -> CheckpointUploadPublic:
    """Store a checkpoint file (raw body); returns its upload id, size and sha256 (201)."""
    upload_id = new_upload_id()
    head = b""
    with write_upload(artifacts, upload_id) as writer:
        async for chunk in request.stream():  # the request guard raises 413 past MAX_UPLOAD_BYTES
            if len(head) < len(_ZIP_MAGIC):
                head += chunk[: len(_ZIP_MAGIC) - len(head)]
            await run_in_threadpool(writer.write, chunk)  # an object store's part upload blocks
        if not head.startswith(_ZIP_MAGIC):
            raise RequestValidationError([{
                "loc": ("body",), "type": "value_error", "input": None,
                "msg": "not a torch checkpoint: torch.save writes a zip archive (the body must be the raw .pt file)",
            }])
    record = await run_in_threadpool(record_upload, artifacts, upload_id, writer.digest(), principal=principal)
    response.headers["Location"] = f"{UPLOAD_PATH}/{upload_id}"
    return to_upload_public(record)


def to_upload_public(record: UploadRecord) -> CheckpointUploadPublic:
    return CheckpointUploadPublic(upload_id=record.upload_id, size=record.size, sha256=record.sha256,
                                  created_at=datetime.fromisoformat(record.created_at))


@router.get("/{upload_id}", operation_id="read_checkpoint_upload", responses=_READ_PROBLEMS)
def read_checkpoint_upload(upload_id: str, artifacts: ArtifactsDep, principal: PrincipalDep
                           ) -> CheckpointUploadPublic:
    """An uploaded checkpoint's id, size, sha256 and upload time (the `Location` of its upload)."""
    return to_upload_public(read_upload(artifacts, upload_id, principal=principal))


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT, operation_id="delete_checkpoint_upload",
               responses=_READ_PROBLEMS)
def delete_checkpoint_upload(upload_id: str, artifacts: ArtifactsDep, principal: PrincipalDep) -> Response:
    """Remove an uploaded checkpoint; evaluation jobs that name it afterwards are refused (422)."""
    delete_upload(artifacts, upload_id, principal=principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
