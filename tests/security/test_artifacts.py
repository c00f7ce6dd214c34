"""Hostile artifact requests: path traversal and absolute paths in every path parameter, symlinks
out of the artifact directory, absurd Range headers; only weights_only loads anywhere."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from api_schemas import JobState
from server.deps import principal_of
from server.store import ArtifactStore, get_checkpoint, register_checkpoint
from server.store.objects import LocalObjectStore
from server.store.principals import ADMIN
from tests.factories import make_job, stored_checkpoint
from tests.security.conftest import GOOD_KEY

REPO = Path(__file__).resolve().parents[2]
KEY = {"X-API-Key": GOOD_KEY}
CONTENT = bytes(range(256)) * 8  # 2048 bytes


@pytest.fixture
def job_id(secured_app: FastAPI) -> str:
    artifacts: ArtifactStore = secured_app.state.artifacts
    with secured_app.state.session_factory() as session:
        job = make_job(session, JobState.RUNNING, principal=principal_of(GOOD_KEY))
        info = stored_checkpoint(artifacts, job.id, "final", CONTENT, step=4, final=True)
        register_checkpoint(session, job.id, info, lease_token=job.lease_token, store=artifacts)
        artifacts.objects.write(artifacts.log_key(job.id), b"hello\n")
        return str(job.id)


def _local_path(app: FastAPI, key: str) -> Path:
    objects = app.state.artifacts.objects
    assert isinstance(objects, LocalObjectStore)
    return objects.path(key)


def _final_checkpoint_path(app: FastAPI, job_id: str) -> Path:
    artifacts: ArtifactStore = app.state.artifacts
    with app.state.session_factory() as session:
        row = get_checkpoint(session, job_id, "final", principal=ADMIN)
        return _local_path(app, artifacts.job_key(job_id, row.path))


TRAVERSALS = [
    "..%2f..%2f..%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2e%2e",
    "%2fetc%2fpasswd", "%2Fetc%2Fpasswd", "final%00.pt", "final%2f..%2f..%2flog.txt", "..%5c..%5cwin.ini",
    "%252e%252e%252fetc%252fpasswd", "....%2f%2f....%2f%2fetc%2fpasswd",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_in_a_checkpoint_name_is_404(secured: Any, job_id: str, name: str) -> None:
    response = secured.get(f"/v1/jobs/{job_id}/checkpoints/{name}", headers=KEY)
    assert response.status_code == 404, response.text
    assert b"root:" not in response.content


@pytest.mark.parametrize("bad_id", TRAVERSALS)
@pytest.mark.parametrize("suffix", ["", "/checkpoints", "/checkpoints/final", "/logs", "/metrics", "/events"])
def test_traversal_in_a_job_id_is_404(secured: Any, bad_id: str, suffix: str) -> None:
    response = secured.get(f"/v1/jobs/{bad_id}{suffix}", headers=KEY)
    assert response.status_code in (404, 405), (response.status_code, response.text)  # 405: '..' collapsed the path
    assert b"root:" not in response.content


def test_symlinked_checkpoint_pointing_outside_is_404(secured_app: FastAPI, secured: Any, job_id: str) -> None:
    path = _final_checkpoint_path(secured_app, job_id)
    path.unlink()
    path.symlink_to("/etc/passwd")
    assert secured.get(f"/v1/jobs/{job_id}/checkpoints/final", headers=KEY).status_code == 404


def test_symlinked_job_directory_pointing_outside_is_404(secured_app: FastAPI, secured: Any, job_id: str,
                                                          tmp_path: Path) -> None:
    artifacts: ArtifactStore = secured_app.state.artifacts
    outside = tmp_path / "outside"
    job_dir = _local_path(secured_app, artifacts.job_prefix(job_id))
    job_dir.rename(outside)  # same files, now outside the artifact root
    job_dir.symlink_to(outside, target_is_directory=True)
    assert secured.get(f"/v1/jobs/{job_id}/checkpoints/final", headers=KEY).status_code == 404
    assert secured.get(f"/v1/jobs/{job_id}/logs", headers=KEY).status_code == 404


def test_symlinked_log_pointing_outside_is_404(secured_app: FastAPI, secured: Any, job_id: str) -> None:
    log = _local_path(secured_app, secured_app.state.artifacts.log_key(job_id))
    log.unlink()
    log.symlink_to("/etc/passwd")
    response = secured.get(f"/v1/jobs/{job_id}/logs", headers=KEY)
    assert response.status_code == 404 and b"root:" not in response.content


def test_range_past_the_end_is_416(secured: Any, job_id: str) -> None:
    response = secured.get(f"/v1/jobs/{job_id}/checkpoints/final", headers={**KEY, "Range": "bytes=999999999999-"})
    assert response.status_code == 416
    assert response.headers.get("content-range") == f"bytes */{len(CONTENT)}"


@pytest.mark.parametrize("value", [
    "bytes=0-0,5-5,10-10", "bytes=-0", "bytes=-999999999999999999999", "bytes=5-1", "bytes=abc", "bytes=",
    "bytes=0-99999999999999999999999999", "bytes=-1", "bytes=0-", "items=0-5", "bytes=0-1," * 2000 + "0-1",
    "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2048, 2)), "bytes=1-2,3-4,0-2047", "bytes=--1", "bytes=1--2",
    "bytes=99999999999999999999999999999-",
])
def test_odd_or_absurd_ranges_never_fail_the_server(secured: Any, job_id: str, value: str) -> None:
    response = secured.get(f"/v1/jobs/{job_id}/checkpoints/final", headers={**KEY, "Range": value})
    assert response.status_code in (200, 206, 400, 416), (value[:60], response.status_code, response.text[:200])
    if response.status_code == 206 and "," not in value:
        assert len(response.content) <= len(CONTENT)


def test_too_many_ranges_do_not_amplify_the_response(secured: Any, job_id: str) -> None:
    """2,000 overlapping one-byte ranges must not become a 2,000-part response far larger than the file."""
    value = "bytes=" + ",".join("0-2047" for _ in range(2000))
    response = secured.get(f"/v1/jobs/{job_id}/checkpoints/final", headers={**KEY, "Range": value})
    assert response.status_code in (200, 206, 400, 416)
    assert len(response.content) <= 4 * len(CONTENT) + 65536


# ---------------------------------------------------------------------------------------------- weights_only


def _torch_load_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for package in ("ris_model", "server", "worker"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load"):
                    if ast.unparse(node.func) == "load" and "torch" not in path.read_text():
                        continue
                    calls.append((f"{path.relative_to(REPO)}:{node.lineno}", node))
    return calls


def test_every_torch_load_in_the_service_is_weights_only() -> None:
    calls = [(where, c) for where, c in _torch_load_calls() if ast.unparse(c.func) == "torch.load"]
    assert calls, "the checkpoint loader exists"
    for where, call in calls:
        flags = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert flags.get("weights_only") == "True", f"{where}: torch.load without weights_only=True"


class _Exploit:
    """Unpickled by a full unpickler, it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_holding_code_is_refused_and_never_run(tmp_path: Path) -> None:
    from ris_model.errors import CheckpointError
    from ris_model.train.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(hostile)
    assert not marker.exists(), "the pickle's code ran"
    pickle.loads(hostile.read_bytes())  # the payload is live: a full unpickler runs it
    assert marker.read_text() == "pwned"
