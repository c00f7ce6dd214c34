"""A job's local working directory on this worker, and the upload of its log to the artifact store.

Owns: `JobScratch` (`<SCRATCH_DIR>/jobs/<id>/{checkpoints/, inputs/, log.txt}`: where the trainer writes
checkpoints, where inputs such as the checkpoint to resume from are downloaded, and the log file) and
`LogUploader`. Imports no torch. The scratch directory is this machine's alone: everything another machine
needs (checkpoints, log, reports) goes to the artifact store, and the directory is removed when the attempt ends.
"""

from __future__ import annotations

import logging
import shutil
import threading
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


class LogUploader(threading.Thread):
    """Copies the job's local log file to the artifact store's `jobs/<id>/log.txt` (the API reads it there)
    every `interval_s`, from a thread of its own: a slow store never delays the lease heartbeat.

    The log of every attempt continues the one before: `restore` reads what the store holds (the earlier
    attempts' lines), and every upload sends those lines followed by this attempt's file. Nothing is uploaded
    before `restore` ran, so an early upload can never replace the earlier lines. Upload errors are logged,
    never raised: a log must not fail a job.
    """

    def __init__(self, artifacts: ArtifactStore, job_id: str, path: Path, *, interval_s: float) -> None:
        super().__init__(name=f"log-uploader-{job_id}", daemon=True)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._artifacts = artifacts
        self._key = artifacts.log_key(job_id)
        self._path = path
        self._interval_s = interval_s
        self._uploaded_size = -1
        self._earlier = b""
        self._restored = False

    def restore(self) -> None:
        """Read the log of earlier attempts from the store (nothing when there is none)."""
        try:
            info = self._artifacts.objects.stat(self._key)
            if info is not None:
                self._earlier = self._artifacts.objects.read_range(self._key, 0, info.size)
        except Exception as exc:  # noqa: BLE001 - the new attempt still logs; the earlier lines stay in the store
            log.warning("could not fetch the job's earlier log: %s", exc)
            return  # uploading now would replace the earlier lines: this attempt's log stays local
        self._restored = True

    def run(self) -> None:
        self.restore()
        while not self._stopped.wait(self._interval_s):
            self.upload()

    def stop(self) -> None:
        """Stop the thread, then upload what the log holds now (the last lines of the attempt)."""
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=60.0)
        self.upload()

    def upload(self) -> None:
        with self._lock:
            self._upload_locked()

    def _upload_locked(self) -> None:
        if not self._restored:
            return
        try:
            size = self._path.stat().st_size
            if size == self._uploaded_size:
                return
            self._artifacts.objects.write(self._key, self._earlier + self._path.read_bytes())
            self._uploaded_size = size
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.warning("could not upload the job's log: %s", exc)
