"""Shared test builders: jobs in any state through the store's own functions, and tiny configs."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api_schemas import (
    CheckpointInfo,
    DataConfig,
    DiagnosticJobConfig,
    FailureReason,
    JobKind,
    JobState,
    ModelConfig,
    SystemConfig,
)
from api_schemas.config import LossWeights, PhaseConfig
from server.store import ArtifactStore, claim_job, create_job, request_cancel, transition
from server.store.models import JobRow
from server.store.principals import ADMIN, ANONYMOUS, Principal


def tiny_config() -> dict[str, Any]:
    """A DiagnosticJobConfig small enough for a CPU test run, as the JSON a client would POST."""
    config = DiagnosticJobConfig(
        system=SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4, k_max=2),
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
        data=DataConfig(n_train=64, n_val=32, batch_size=16),
        phases=(PhaseConfig(name="k_only", epochs=1, amp=False, loss_weights=LossWeights(lam_cov=0.1, lam_k=1.5)),),
        log_every_steps=1,
    )
    return config.model_dump(mode="json")


def new_lease() -> str:
    return f"lease-{uuid.uuid4().hex}"


def make_job(
    session: Session,
    state: JobState = JobState.QUEUED,
    *,
    kind: JobKind = JobKind.DIAGNOSTIC,
    max_attempts: int = 2,
    principal: Principal = ANONYMOUS,
    lease_token: str | None = None,
    name: str | None = "test job",
) -> JobRow:
    """A job in `state`, reached through the real transitions (so events and timestamps are real).

    RUNNING and CANCELLING jobs hold `lease_token` (a fresh one if None); read it from `row.lease_token`.
    """
    job = create_job(
        session, kind=kind, name=name, config=tiny_config(), max_attempts=max_attempts, principal=principal
    )
    if state is JobState.QUEUED:
        return job
    if state is JobState.CANCELLED:
        return request_cancel(session, job.id, principal=ADMIN)
    lease = lease_token or new_lease()
    claimed = claim_job(session, job.id, worker="test-worker", lease_token=lease)
    if claimed is None:
        raise RuntimeError("claim of a fresh job failed")
    if state is JobState.RUNNING:
        return claimed
    if state is JobState.CANCELLING:
        return transition(session, job.id, JobState.CANCELLING, principal=ADMIN)
    if state is JobState.FAILED:
        return transition(
            session, job.id, JobState.FAILED, lease_token=lease, failure_reason=FailureReason.TRAINING_ERROR,
            message="boom", principal=ADMIN,
        )
    return transition(session, job.id, state, lease_token=lease, principal=ADMIN)


class _RunsCode:
    """A pickle payload that creates `marker` when unpickled by a full (not weights-only) unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_checkpoint_bytes(marker: Path) -> bytes:
    """A torch.save zip that looks like a ris-jobs checkpoint (format marker, required keys) and carries a code
    payload: loading it with weights_only=False would create `marker`."""
    import io

    import torch

    from ris_model.train import checkpoint as ckpt

    buf = io.BytesIO()
    torch.save({ckpt.FORMAT_KEY: ckpt.FORMAT, ckpt.MODEL_KEY: _RunsCode(marker), ckpt.CONFIG_KEY: {},
                ckpt.CONFIG_SHA_KEY: "0", ckpt.POSITION_KEY: {}}, buf)
    return buf.getvalue()


def stored_checkpoint(artifacts: ArtifactStore, job_id: str, name: str, data: bytes, *, step: int,
                      final: bool = False, phase: str = "k_only") -> CheckpointInfo:
    """Put `data` into the artifact store as the worker does (`put_checkpoint`: under the checkpoint's content key)
    and return the CheckpointInfo to register (its `path` is that key, relative to the job)."""
    local = Path(tempfile.mkdtemp()) / f"{name}.pt"
    local.write_bytes(data)
    info = CheckpointInfo(name=name, phase=phase, epoch=0, step=step, path=str(local), size=len(data),
                          sha256=hashlib.sha256(data).hexdigest(), is_final=final)
    try:
        return artifacts.put_checkpoint(job_id, info)
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)
