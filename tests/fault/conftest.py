"""Fault-test fixtures: a private redis-server on a free port (restartable), real `celery worker` processes
(prefork, as in production), a real `ris-jobs reaper` and a real uvicorn API process, all configured through the
environment as in production, plus the loss audit that every fault test ends with.

Nothing here touches the shared Redis: tests may SIGKILL workers, the API, or restart their own redis-server.
Timings are shrunk through the environment (LEASE_TIMEOUT_S, REAPER_INTERVAL_S, ...), never patched.
Set RIS_FAULT_EVIDENCE=<path.jsonl> to append one evidence row per injected fault (docs/evidence/faults.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import JobKind, JobState, TrainingJobConfig
from server.dispatch import dispatch_job, make_producer
from server.settings import Settings
from server.store import ArtifactStore, create_job, create_schema, get_job, make_engine, make_session_factory
from server.store.models import CheckpointRow, MetricRow
from server.store.objects import TEMP_PREFIX
from server.store.principals import ADMIN, ANONYMOUS
from tests.factories import tiny_config
from tests.services import service_missing
from worker.cli import redis_answers

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

#: Shrunk timings of every fault world (seconds); a test may override any of them.
FAULT_ENV = {
    "API_KEYS": "",
    "HEARTBEAT_INTERVAL_S": "0.4",
    "LEASE_TIMEOUT_S": "2.5",
    "REAPER_INTERVAL_S": "0.5",
    "REDISPATCH_AFTER_S": "3",
    "CANCEL_GRACE_S": "10",
    "CHECKPOINT_INTERVAL_S": "0.5",
    "METRICS_FLUSH_INTERVAL_S": "0.2",
    "ALLOW_FAULT_INJECTION": "true",  # the fault tests slow jobs down and inject NaNs through config.debug
}


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


def slow_training_config(*, epochs: int = 6, sleep_per_step_s: float = 0.05, **debug: Any) -> dict[str, Any]:
    """A training job of `epochs` tiny epochs (4 steps each, ~1 s per epoch on a CPU), checkpointing every
    epoch end and every CHECKPOINT_INTERVAL_S, one metric point set per step."""
    config = {k: v for k, v in tiny_config().items() if k in TrainingJobConfig.model_fields}
    config["phases"][0]["epochs"] = epochs
    config["debug"] = {"sleep_per_step_s": sleep_per_step_s, **debug}
    return config


# ---------------------------------------------------------------------------------------------- processes


class RedisServer:
    """A private, non-persistent redis-server on a fixed free port that tests may stop and start again."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            service_missing("redis-server", "PATH", "redis-server/redis-cli not installed (apt-get install it)")
        self._binary = binary
        self._dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        return redis_answers(self.url)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for("redis-server", self.answers, deadline_s=10)

    def shutdown_nosave(self) -> None:
        """`redis-cli shutdown nosave`: every key and queued message is gone."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        wait_for("redis-server down", lambda: not self.answers(), deadline_s=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class Api:
    proc: subprocess.Popen[bytes]
    base_url: str

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0, **kwargs)


@dataclass
class Service:
    """One fault-test world: its Redis, its SQLite store, its artifact dir, and the processes started in it."""

    env: dict[str, str]
    settings: Settings
    sessions: sessionmaker[Session]
    log_dir: Path
    redis: RedisServer
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifact_location)

    def start_worker(self, name: str, *, queues: tuple[str, ...] = ("gpu", "cpu")) -> subprocess.Popen[bytes]:
        """A real prefork Celery worker (own process group, so a SIGKILL takes parent and child) serving the
        device `queues`, with a scratch directory of its own, as if it ran on a machine of its own: workers
        share only the database, Redis and the artifact store."""
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-c", "1", "-P", "prefork",
            "--max-tasks-per-child=1", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "-Q", ",".join(f"{self.settings.job_queue}.{q}" for q in queues),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]
        scratch = self.log_dir.parent / f"scratch-{name}-{uuid.uuid4().hex[:6]}"
        return self._spawn(name, cmd, env={"SCRATCH_DIR": str(scratch)})

    def log_text_of_job(self, job_id: str) -> str:
        """The job's log as the API serves it (from the artifact store)."""
        key = self.artifacts.log_key(job_id)
        return self.artifacts.objects.read_range(key, 0, 1 << 24).decode(errors="replace")

    def start_sweep_worker(self, name: str = "sweeps") -> subprocess.Popen[bytes]:
        """A worker of the sweep drivers' queue (what `ris-jobs worker --sweeps N` starts)."""
        return self.start_worker(name, queues=("sweeps",))  # <JOB_QUEUE>.sweeps

    def start_reaper(self) -> subprocess.Popen[bytes]:
        return self._spawn("reaper", [sys.executable, "-m", "worker.cli", "reaper"])

    def start_api(self, port: int | None = None) -> Api:
        """A real uvicorn process serving the API (`ris-jobs api`); returns once /healthz answers."""
        port = port or free_port()
        proc = self._spawn("api", [sys.executable, "-m", "worker.cli", "api", "--port", str(port)])
        api = Api(proc, f"http://127.0.0.1:{port}")

        def healthy() -> bool:
            try:
                return httpx.get(f"{api.base_url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the API's /healthz", healthy, deadline_s=30)
        return api

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log_text(self, prefix: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{prefix}*.log")))

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

    # -- jobs through the store (the API is under test elsewhere) --

    def submit(self, config: dict[str, Any], *, kind: JobKind = JobKind.TRAINING, max_attempts: int = 2,
               dispatch: bool = True) -> str:
        with self.sessions() as s:
            job = create_job(s, kind=kind, name="fault", config=config, max_attempts=max_attempts, principal=ANONYMOUS)
            if dispatch:
                dispatch_job(s, make_producer(self.settings), job.id, self.settings.job_queue)
            return job.id

    def dispatch(self, job_id: str) -> None:
        with self.sessions() as s:
            dispatch_job(s, make_producer(self.settings), job_id, self.settings.job_queue)

    def job(self, job_id: str) -> Any:
        with self.sessions() as s:
            return get_job(s, job_id, principal=ADMIN)

    def wait_state(self, job_id: str, *states: JobState, deadline_s: float = 90.0) -> Any:
        return wait_for(f"job {job_id} in {[s.value for s in states]}",
                        lambda: (j := self.job(job_id)).state in states and j, deadline_s=deadline_s)

    def wait_terminal(self, job_id: str, deadline_s: float = 120.0) -> Any:
        return self.wait_state(job_id, *TERMINAL, deadline_s=deadline_s)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def build_service(directory: Path, redis_server: RedisServer, **overrides: str) -> tuple[Service, Any]:
    """One fault world in `directory` (FAULT_ENV overridden by upper-case `overrides`), its schema migrated;
    returns it and its engine (dispose it when done). Also used by bench/soak.py."""
    values = {
        **FAULT_ENV,
        "DATABASE_URL": f"sqlite:///{directory / 'jobs.sqlite'}",
        "REDIS_URL": redis_server.url,
        "ARTIFACT_DIR": str(directory / "artifacts"),
        "SCRATCH_DIR": str(directory / "scratch"),
        "LOG_UPLOAD_INTERVAL_S": "0.5",
        "JOB_QUEUE": f"fault-{uuid.uuid4().hex[:8]}",
        **overrides,
    }
    env = {**os.environ, **values, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    settings = Settings(**{k.lower(): v for k, v in values.items()})  # type: ignore[arg-type]
    engine = make_engine(settings.database_url)
    create_schema(engine)
    log_dir = directory / "logs"
    log_dir.mkdir(exist_ok=True)
    svc = Service(env=env, settings=settings, sessions=make_session_factory(engine), log_dir=log_dir,
                  redis=redis_server)
    return svc, engine


@pytest.fixture
def make_service(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Service]]:
    """`make_service(**env)`: one fault world with FAULT_ENV overridden by `env` (upper-case names)."""
    made: list[Service] = []
    engines: list[Any] = []

    def make(**overrides: str) -> Service:
        svc, engine = build_service(tmp_path, redis_server, **overrides)
        engines.append(engine)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop_all()
    for engine in engines:
        engine.dispose()


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()


# ---------------------------------------------------------------------------------------------- loss audit


@dataclass(frozen=True)
class Acknowledged:
    """What the store had acknowledged at one moment: metric points by seq, checkpoint records by name."""

    points: dict[int, tuple[str, int, str, float | None]]
    checkpoints: dict[str, tuple[int, str]]


def acknowledged(svc: Service, job_id: str) -> Acknowledged:
    with svc.sessions() as s:
        rows = s.query(MetricRow).filter(MetricRow.job_id == job_id).all()
        ckpts = s.query(CheckpointRow).filter(CheckpointRow.job_id == job_id).all()
        return Acknowledged(
            points={r.seq: (r.phase, r.step, r.key, r.value) for r in rows},
            checkpoints={c.name: (c.step, c.sha256) for c in ckpts},
        )


@dataclass
class Losses:
    """What a fault cost: a job not terminal, points acknowledged but gone, checkpoints listed but broken."""

    jobs: int = 0
    points: int = 0
    checkpoints: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: Losses) -> None:
        self.jobs += other.jobs
        self.points += other.points
        self.checkpoints += other.checkpoints
        self.notes += other.notes

    def assert_none(self) -> None:
        assert (self.jobs, self.points, self.checkpoints) == (0, 0, 0), self.notes


def audit(svc: Service, job_id: str, before: Acknowledged | None = None) -> Losses:
    """Compare the store with what was acknowledged: the job is terminal; metric seqs are 1..N without a
    duplicate or a gap; every acknowledged point is still there unchanged; every listed checkpoint's file exists
    and has the recorded sha256 (a rolling checkpoint may have been rewritten since: its *record* must still
    match its object); no temporary object is left in the artifact store (noted, not counted)."""
    losses = Losses()
    job = svc.job(job_id)
    if JobState(job.state) not in TERMINAL:
        losses.jobs += 1
        losses.notes.append(f"job {job_id} is {job.state}, not terminal")
    now = acknowledged(svc, job_id)
    seqs = sorted(now.points)
    if seqs != list(range(1, len(seqs) + 1)):
        losses.points += (seqs[-1] if seqs else 0) - len(seqs)
        losses.notes.append(f"seqs not contiguous: {len(seqs)} points, max seq {seqs[-1] if seqs else 0}")
    if before is not None:
        gone = [seq for seq, p in before.points.items() if now.points.get(seq) != p]
        losses.points += len(gone)
        if gone:
            losses.notes.append(f"{len(gone)} acknowledged points gone or changed, e.g. seq {gone[:5]}")
        missing = [name for name in before.checkpoints if name not in now.checkpoints]
        losses.checkpoints += len(missing)
        if missing:
            losses.notes.append(f"checkpoint records gone: {missing}")
    store = svc.artifacts
    with svc.sessions() as s:
        for c in s.query(CheckpointRow).filter(CheckpointRow.job_id == job_id).all():
            key = store.job_key(job_id, c.path)
            info = store.objects.stat(key)
            data = store.objects.read_range(key, 0, info.size) if info is not None else b""
            if info is None or info.size != c.size or hashlib.sha256(data).hexdigest() != c.sha256:
                losses.checkpoints += 1
                losses.notes.append(f"checkpoint {c.name}: object missing, partial or its sha256 differs")
    temps = [o.key for o in store.objects.list(TEMP_PREFIX)]
    if temps:
        losses.notes.append(f"temporary objects left (not listed, swept by the reaper): {temps}")
    return losses


def train_loss_steps(svc: Service, job_id: str) -> list[int]:
    """Steps that logged `train/loss`, in seq order (a replayed step after a resume appears twice)."""
    with svc.sessions() as s:
        rows = s.query(MetricRow).filter(MetricRow.job_id == job_id, MetricRow.key == "train/loss") \
            .order_by(MetricRow.seq).all()
        return [r.step for r in rows]


# ---------------------------------------------------------------------------------------------- evidence


@dataclass
class EvidenceRow:
    fault: str
    injections: int
    jobs_lost: int
    points_lost: int
    checkpoints_lost: int
    recovery_s: list[float]
    test: str


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`evidence(fault, injections, losses, recovery_s)`: appends a row to $RIS_FAULT_EVIDENCE (if set)."""

    def record(fault: str, injections: int, losses: Losses, recovery_s: list[float]) -> None:
        path = os.environ.get("RIS_FAULT_EVIDENCE")
        if not path:
            return
        row = EvidenceRow(fault, injections, losses.jobs, losses.points, losses.checkpoints,
                          [round(r, 2) for r in recovery_s], request.node.nodeid)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(row)) + "\n")

    return record


def api_client(svc: Service) -> Any:
    """An in-process client of the API on the fault world's store and Redis (for faults that are not the API's)."""
    import warnings

    from server.main import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(create_app(svc.settings))
