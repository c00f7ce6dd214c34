"""A job's local working directory on this worker, and the upload of its log to the artifact store.

Owns: `JobScratch` (`<SCRATCH_DIR>/jobs/<id>/{checkpoints/, inputs/, log.txt}`: where the trainer writes
checkpoints, where inputs such as the checkpoint to resume from are downloaded, and the log file) and
`LogUploader`. Imports no torch. The scratch directory is this machine's alone: everything another machine
needs (checkpoints, log, reports) goes to the artifact store, and the directory is removed when the attempt ends.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from server.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)


class JobScratch:
    """Paths of one job's scratch directory (created on demand)."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.dir = Path(root) / "jobs" / job_id

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def inputs_dir(self) -> Path:
        return self.dir / "inputs"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"

    def create(self) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.inputs_dir.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class LogUploader:
    """Copies the job's local log file to the artifact store's `jobs/<id>/log.txt` (the API reads it there).

    The log of every attempt continues the one before: `restore` downloads what the store holds before the
    attempt appends to it. Upload errors are logged, never raised: a log must not fail a job.
    """

    def __init__(self, artifacts: ArtifactStore, job_id: str, path: Path, *, interval_s: float) -> None:
        self._artifacts = artifacts
        self._key = artifacts.log_key(job_id)
        self._path = path
        self._interval_s = interval_s
        self._next = time.monotonic() + interval_s
        self._uploaded_size = -1

    def restore(self) -> None:
        """Download the log of earlier attempts into the local file (nothing to do when there is none)."""
        try:
            if self._artifacts.objects.stat(self._key) is not None:
                self._artifacts.objects.get_file(self._key, self._path)
        except Exception as exc:  # noqa: BLE001 - the new attempt still logs; the earlier lines stay in the store
            log.warning("could not fetch the job's earlier log: %s", exc)

    def upload_if_due(self) -> None:
        if time.monotonic() >= self._next:
            self.upload()

    def upload(self) -> None:
        self._next = time.monotonic() + self._interval_s
        try:
            size = self._path.stat().st_size
            if size == self._uploaded_size:
                return
            self._artifacts.objects.put_file(self._path, self._key)
            self._uploaded_size = size
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.warning("could not upload the job's log: %s", exc)
