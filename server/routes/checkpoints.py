"""Checkpoint routes (ARCHITECTURE.md, "HTTP API", "Checkpoints"): list and download.

Downloads: `final`/`latest` aliases, names checked against CHECKPOINT_NAME_PATTERN (else 404), objects looked
up inside the job's prefix of the artifact store, `ETag: "<sha256>"` with 304 on If-None-Match, `Repr-Digest`
(RFC 9530), and Range / If-Range (206, 416), streamed from the store (server/routes/downloads.py); with
ARTIFACT_PRESIGNED_REDIRECT, a 307 to a presigned URL of the object instead.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from api_schemas import CheckpointPublic
from server.deps import ArtifactsDep, PrincipalDep, SessionDep, SettingsDep
from server.errors import problem_responses
from server.routes.downloads import object_response
from server.store import get_checkpoint, list_checkpoints
from server.store.artifacts import checkpoint_object
from server.store.models import CheckpointRow

router = APIRouter(prefix="/v1/jobs", tags=["checkpoints"])
_PROBLEMS = problem_responses(401, 404)


def checkpoint_url(row: CheckpointRow) -> str:
    return f"/v1/jobs/{row.job_id}/checkpoints/{row.name}"


def to_checkpoint_public(row: CheckpointRow) -> CheckpointPublic:
    return CheckpointPublic(
        name=row.name, phase=row.phase, epoch=row.epoch, step=row.step, size=row.size, sha256=row.sha256,
        created_at=row.created_at, url=checkpoint_url(row),
    )


@router.get("/{job_id}/checkpoints", operation_id="read_checkpoints", responses=_PROBLEMS)
def read_checkpoints(job_id: str, session: SessionDep, principal: PrincipalDep) -> list[CheckpointPublic]:
    """The job's checkpoints by step (available while it runs)."""
    return [to_checkpoint_public(row) for row in list_checkpoints(session, job_id, principal=principal)]


_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_PROBLEMS,
    200: {"content": {"application/octet-stream": {}}, "description": "the checkpoint file"},
    206: {"description": "the requested byte range"},
    304: {"description": "If-None-Match matched the ETag"},
    307: {"description": "ARTIFACT_PRESIGNED_REDIRECT: download the object from this presigned URL"},
    416: {"description": "unsatisfiable Range"},
}


@router.get(
    "/{job_id}/checkpoints/{name}", operation_id="download_checkpoint", response_class=Response,
    responses=_DOWNLOAD_RESPONSES,
)
@router.head(
    "/{job_id}/checkpoints/{name}", operation_id="head_checkpoint", response_class=Response,
    responses=_DOWNLOAD_RESPONSES,
)
def download_checkpoint(
    job_id: str,
    name: str,
    request: Request,
    session: SessionDep,
    artifacts: ArtifactsDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    """The checkpoint file (`final` and `latest` are aliases); resumable with Range."""
    row = get_checkpoint(session, job_id, name, principal=principal)
    key, info = checkpoint_object(artifacts, row)
    digest = f"sha-256=:{base64.b64encode(bytes.fromhex(row.sha256)).decode()}:"
    return object_response(
        artifacts.objects, key, info, settings=settings, method=request.method,
        media_type="application/octet-stream", etag=f'"{row.sha256}"', filename=f"{row.job_id}-{row.name}.pt",
        range_header=range_header, if_range=if_range, if_none_match=if_none_match, headers={"Repr-Digest": digest},
    )
