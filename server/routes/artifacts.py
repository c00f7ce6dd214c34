"""Job artifact downloads: `GET /v1/jobs/{id}/artifacts/{name}` serves an evaluation's plots and
report files.

Same path safety as checkpoint downloads: `name` must match ARTIFACT_NAME_PATTERN (one file name, known
extension), the file is resolved inside the job's `artifacts/` directory, symlinks are refused, and anything
refused is a plain 404. The report (`GET /v1/jobs/{id}/report`) lists the artifacts with their sha256.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.deps import ArtifactsDep, PrincipalDep, SessionDep
from server.errors import problem_responses
from server.ranges import RangedFileResponse
from server.store import jobs as store_jobs
from server.store.files import artifact_file

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **problem_responses(401, 404),
    200: {"content": {"image/png": {}, "application/json": {}, "text/markdown": {}}, "description": "the file"},
}


@router.get("/{job_id}/artifacts/{name}", operation_id="download_artifact", response_class=FileResponse,
            responses=_RESPONSES)
def download_artifact(job_id: str, name: str, session: SessionDep, artifacts: ArtifactsDep,
                      principal: PrincipalDep) -> FileResponse:
    """An output file of the job (e.g. `k_acc_vs_snr.png`, `report.json`)."""
    job = store_jobs.get_job(session, job_id, principal=principal)
    path, media_type = artifact_file(artifacts, job.id, name)
    return RangedFileResponse(path, media_type=media_type, headers={"Cache-Control": "private, no-cache"})
