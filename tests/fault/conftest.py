"""Fault-test fixtures: a private redis-server on a free port, real `celery worker` processes (prefork, as in
production) and a real `ris-jobs reaper` process, all configured through the environment (jobserver_notes §5.3).

Nothing here touches the shared Redis: tests may SIGKILL workers or restart their own redis-server freely.
Timings are shrunk through the environment (LEASE_TIMEOUT_S, REAPER_INTERVAL_S, ...), never patched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from server.settings import Settings
from server.store import create_schema, make_engine, make_session_factory

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], *, deadline_s: float = 60.0, interval_s: float = 0.1) -> T:
    """Poll `check` until it returns a truthy value; fail naming `what` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


@dataclass
class Service:
    """One fault-test world: its Redis, its SQLite store, its artifact dir, and the processes started in it."""

    env: dict[str, str]
    settings: Settings
    sessions: sessionmaker[Session]
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """A real prefork Celery worker (own process group, so a SIGKILL takes parent and child)."""
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-c", "1", "-P", "prefork",
            "--max-tasks-per-child=1", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "-Q", self.settings.job_queue,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]
        return self._spawn(name, cmd)

    def start_reaper(self) -> subprocess.Popen[bytes]:
        return self._spawn("reaper", [sys.executable, "-m", "worker.cli", "reaper"])

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        out = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group (worker parent and its pool child): the machine is gone."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(proc)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A private, non-persistent redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except (RedisError, OSError):
            return False

    wait_for("redis-server", answers, deadline_s=10)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def service(tmp_path: Path, redis_server: str) -> Iterator[Service]:
    env_values = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
        "REDIS_URL": redis_server,
        "ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "JOB_QUEUE": f"fault-{uuid.uuid4().hex[:8]}",
        "API_KEYS": "",
        "HEARTBEAT_INTERVAL_S": "0.5",
        "LEASE_TIMEOUT_S": "3",
        "REAPER_INTERVAL_S": "0.5",
        "CANCEL_GRACE_S": "5",
        "CHECKPOINT_INTERVAL_S": "0.5",
        "METRICS_FLUSH_INTERVAL_S": "0.2",
    }
    env = {**os.environ, **env_values, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    settings = Settings(**{k.lower(): v for k, v in env_values.items()})  # type: ignore[arg-type]
    engine = make_engine(settings.database_url)
    create_schema(engine)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    svc = Service(env=env, settings=settings, sessions=make_session_factory(engine), log_dir=log_dir)
    yield svc
    svc.stop_all()
    engine.dispose()
