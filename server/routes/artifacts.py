"""Job artifact downloads: `GET /v1/jobs/{id}/artifacts/{name}` serves an evaluation's plots and
report files.

Same key safety as checkpoint downloads: `name` must match ARTIFACT_NAME_PATTERN (one file name, known
extension), the object is looked up inside the job's `artifacts/` prefix, and anything refused is a plain 404.
Served from the artifact store with Range support (server/routes/downloads.py). The report
(`GET /v1/jobs/{id}/report`) lists the artifacts with their sha256.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from server.deps import ArtifactsDep, PrincipalDep, SessionDep, SettingsDep
from server.errors import problem_responses
from server.routes.downloads import object_response
from server.store import jobs as store_jobs
from server.store.files import artifact_object

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **problem_responses(401, 404),
    200: {"content": {"image/png": {}, "application/json": {}, "text/markdown": {}}, "description": "the file"},
}


@router.get("/{job_id}/artifacts/{name}", operation_id="download_artifact", response_class=Response,
            responses=_RESPONSES)
def download_artifact(
    job_id: str, name: str, request: Request, session: SessionDep, artifacts: ArtifactsDep, settings: SettingsDep,
    principal: PrincipalDep, range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """An output file of the job (e.g. `k_acc_vs_snr.png`, `report.json`)."""
    job = store_jobs.get_job(session, job_id, principal=principal)
    info, media_type = artifact_object(artifacts, job.id, name)
    return object_response(artifacts.objects, info.key, info, settings=settings, method=request.method,
                           media_type=media_type, range_header=range_header)
