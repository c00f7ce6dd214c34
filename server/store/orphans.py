"""Orphaned artifact files: what lies under ARTIFACT_DIR without a record in the job store, and its removal.

Owns: `Orphans`, `find_orphans` and `remove_orphans` (run by the reaper). A file is an orphan when
- its whole job directory belongs to no job (the job was deleted and removing its files failed or was cut short);
- it is a checkpoint file, or an atomic write's temp file, of a finished job that has no checkpoint record for it
  (a worker killed between writing the file and committing its record, or during the write).
Only files older than the grace period are orphans, and only of jobs that no attempt can still register (a
QUEUED, RUNNING or CANCELLING job may yet record what it wrote). Must not import FastAPI or torch.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api_schemas import TERMINAL_STATES
from server.store.files import ArtifactStore
from server.store.models import CheckpointRow, JobRow

_JOB_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


@dataclass
class Orphans:
    """Job directories without a job, and unrecorded checkpoint files (or temp files) of finished jobs."""

    job_dirs: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.job_dirs) + len(self.files)


def _newest_mtime(path: Path) -> float:
    """The newest modification time in a directory tree (a directory that is still written to is not old)."""
    newest = path.lstat().st_mtime
    for child in path.rglob("*"):
        newest = max(newest, child.lstat().st_mtime)
    return newest


def find_orphans(session: Session, artifacts: ArtifactStore, *, older_than_s: float,
                 now_s: float | None = None) -> Orphans:
    """The orphans under `artifacts` whose files are older than `older_than_s` seconds (see the module)."""
    cutoff = (time.time() if now_s is None else now_s) - older_than_s
    jobs_root = artifacts.root / "jobs"
    orphans = Orphans()
    if not jobs_root.is_dir():
        return orphans
    for job_dir in sorted(jobs_root.iterdir()):
        if job_dir.is_symlink() or not job_dir.is_dir() or not _JOB_DIR_RE.match(job_dir.name):
            continue
        state = session.scalar(select(JobRow.state).where(JobRow.id == job_dir.name))
        if state is None:
            if _newest_mtime(job_dir) < cutoff:
                orphans.job_dirs.append(job_dir)
            continue
        ckpt_dir = job_dir / "checkpoints"
        if state not in _TERMINAL or not ckpt_dir.is_dir() or ckpt_dir.is_symlink():
            continue
        recorded = set(session.scalars(select(CheckpointRow.path).where(CheckpointRow.job_id == job_dir.name)))
        for path in sorted(ckpt_dir.iterdir()):
            if path.is_file() and f"checkpoints/{path.name}" not in recorded and path.lstat().st_mtime < cutoff:
                orphans.files.append(path)
    session.rollback()  # end the read transaction (SQLite WAL)
    return orphans


def remove_orphans(orphans: Orphans) -> int:
    """Remove what `find_orphans` found; returns how many job directories and files went."""
    for job_dir in orphans.job_dirs:
        shutil.rmtree(job_dir, ignore_errors=True)
    for path in orphans.files:
        path.unlink(missing_ok=True)
    return len(orphans)
