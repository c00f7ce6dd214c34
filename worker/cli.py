"""The `ris-jobs` command: `serve` (the README's one-command run), `api`, `worker`, `reaper`
(ARCHITECTURE.md, "The life of a job"), and the user commands of `client.cli` (submit, list, status, watch, logs,
download, report, cancel, ...).

Owns process supervision only: starting, watching and stopping child processes. It imports no torch and never
initialises CUDA: GPUs are counted from CUDA_VISIBLE_DEVICES or `nvidia-smi -L`, and each GPU (or each group
of `--gpus-per-worker` GPUs, for jobs with resources.gpus > 1) gets its own Celery worker child with
CUDA_VISIBLE_DEVICES=<ids>, `-c 1 -P prefork --max-tasks-per-child=1` (ARCHITECTURE.md, "The life of a job").

Queues (`ris-jobs worker --queues`): the GPU workers consume `<JOB_QUEUE>.gpu`; a CPU worker (no GPU visible)
consumes `<JOB_QUEUE>.cpu`. Default: a host with GPUs serves `gpu` only (its cores feed its GPUs); a host without
serves `gpu,cpu` with one CPU worker, so that a single machine runs every job (a `gpu` job without
`resources.device: cuda` then trains on the CPU; one that requires CUDA waits with a reason). In a fleet, give
CPU-only machines `--queues cpu` so that they never take GPU work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import RedisError

from api_schemas import DEVICE_QUEUES
from api_schemas.resources import DeviceQueue
from client import cli as user_cli
from server.dispatch import job_queue_name, sweep_queue
from server.settings import Settings, get_settings
from worker.gpus import visible_gpus

#: Seconds a child gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 20.0
REDIS_INSTALL_HINT = (
    "Redis is not reachable at {url} and no redis-server binary was found.\n"
    "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis),\n"
    "or point REDIS_URL at a running Redis."
)


# -- GPU discovery (no CUDA in this process) --


def gpu_groups(gpus: list[str], per_worker: int) -> list[list[str]]:
    """The GPUs of each Celery worker: consecutive groups of `per_worker` (the last may be smaller)."""
    return [gpus[i:i + per_worker] for i in range(0, len(gpus), per_worker)]


def worker_command(settings: Settings, *, name: str, queues: Sequence[DeviceQueue],
                   loglevel: str = "INFO") -> list[str]:
    """The Celery worker command line of one GPU (or the CPU) consuming the device `queues`: one process, one
    job at a time."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "-c", "1", "-P", "prefork", "--max-tasks-per-child=1", "-n", f"{name}@%h",
        "-Q", ",".join(job_queue_name(settings.job_queue, q) for q in queues), "-E", "--loglevel", loglevel,
    ]


def sweep_worker_command(settings: Settings, *, concurrency: int, loglevel: str = "INFO") -> list[str]:
    """The Celery worker of the sweep drivers: CPU only, `concurrency` sweeps at once, a fresh child each."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "-c", str(concurrency), "-P", "prefork", "--max-tasks-per-child=1", "-n", "sweeps@%h",
        "-Q", sweep_queue(settings.job_queue), "-E", "--loglevel", loglevel,
    ]
def parse_queues(text: str) -> tuple[DeviceQueue, ...]:
    """`gpu`, `cpu` or `gpu,cpu` (argparse type of --queues)."""
    names = tuple(dict.fromkeys(q.strip() for q in text.split(",") if q.strip()))
    bad = [q for q in names if q not in DEVICE_QUEUES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--queues takes gpu, cpu or gpu,cpu; got {text!r}")
    return tuple(q for q in DEVICE_QUEUES if q in names)


def default_queues(gpus: Sequence[str]) -> tuple[DeviceQueue, ...]:
    """What a host serves when --queues is not given: `gpu` with GPUs, `gpu,cpu` without (module docstring)."""
    return ("gpu",) if gpus else ("gpu", "cpu")


# -- child process supervision --


@dataclass
class Supervisor:
    """Starts named children, notices when one dies, and stops them all in reverse start order."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(cmd), env=env)
        self.children.append((name, proc))
        return proc

    def install_signal_handlers(self) -> None:
        """Ctrl-C and SIGTERM ask for a clean shutdown (handled by `wait`)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())

    def wait(self) -> int:
        """Block until a stop is requested or a child exits; then stop everything. Returns an exit code."""
        code = 0
        while not self.stopping.wait(0.5):
            dead = [(n, p) for n, p in self.children if p.poll() is not None]
            if dead:
                name, proc = dead[0]
                print(f"ris-jobs: {name} exited with code {proc.returncode}; stopping the rest", file=sys.stderr)
                code = proc.returncode or 1
                break
        self.stop_all()
        return code

    def stop_all(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"ris-jobs: {name} did not stop in {STOP_GRACE_S:.0f} s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()


# -- Redis --


def redis_answers(url: str) -> bool:
    try:
        client = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (RedisError, OSError):
        return False


def ensure_redis(url: str, supervisor: Supervisor) -> None:
    """Make Redis answer at `url`: use a running one, else start a child redis-server (ephemeral), else exit."""
    if redis_answers(url):
        return
    parts = urlsplit(url)
    binary = shutil.which("redis-server")
    local = parts.scheme == "redis" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if binary is None or not local:
        raise SystemExit(REDIS_INSTALL_HINT.format(url=url))
    port = str(parts.port or 6379)
    print(f"ris-jobs: starting redis-server on port {port} (no persistence: Redis holds nothing durable)")
    supervisor.start("redis", [binary, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    deadline = time.monotonic() + 15.0
    while not redis_answers(url):
        if time.monotonic() > deadline:
            supervisor.stop_all()
            raise SystemExit(f"redis-server did not answer at {url} within 15 s")
        time.sleep(0.2)


# -- subcommands --


def create_schema(settings: Settings) -> None:
    """Bring the job store's schema to the newest revision (Alembic; idempotent) and, when the artifact store
    is a directory, create that directory."""
    from server.store.db import create_schema as create
    from server.store.db import make_engine

    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if settings.artifact_url is None:
        Path(settings.artifact_dir).mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        create(engine)
    finally:
        engine.dispose()


def curl_lines(base: str) -> list[str]:
    """The README's "First job" lines (its bash block, line for line): submit the quick-start diagnostic, poll
    it, download its final checkpoint, read its verdict. `base` is host:port, e.g. 127.0.0.1:8000."""
    body = json.dumps({"kind": "diagnostic", "preset": "quickstart"})
    commented = [
        (f"curl -s {base}/v1/jobs/$ID", "poll: state, progress, nonfinite_steps, metrics"),
        (f"curl -s -OJ {base}/v1/jobs/$ID/checkpoints/final", "the trained checkpoint (ETag = sha256)"),
        (f'curl -s "{base}/v1/jobs/$ID/report?format=md"', "the diagnostic's verdict"),
    ]
    width = max(len(cmd) for cmd, _ in commented) + 3  # the comments line up
    return [
        f"ID=$(curl -s -X POST {base}/v1/jobs -H 'Content-Type: application/json' \\",
        f"      -d '{body}' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')",
        *(f"{cmd:<{width}}# {comment}" for cmd, comment in commented),
    ]


def cmd_serve(args: argparse.Namespace) -> int:
    """Redis (if needed) + schema + API + one worker + reaper, until Ctrl-C."""
    settings = get_settings()
    sup = Supervisor()
    sup.install_signal_handlers()
    ensure_redis(settings.redis_url, sup)
    create_schema(settings)  # the one migration run, before any process that uses the database starts
    here = [sys.executable, "-m", "worker.cli"]
    sup.start("api", here + ["api", "--host", args.host, "--port", str(args.port)])
    sup.start("worker", here + ["worker"])
    sup.start("reaper", here + ["reaper"])
    base = f"http://{args.host}:{args.port}"
    print(f"ris-jobs: API on {base} (docs: {base}/docs). Try:\n")
    print("\n".join(curl_lines(f"{args.host}:{args.port}")) + "\n", flush=True)
    return sup.wait()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the job store's schema to the newest revision and exit (docker compose runs it before the API)."""
    from server.store.db import make_engine
    from server.store.migrate import current_revision

    settings = get_settings()
    create_schema(settings)
    engine = make_engine(settings.database_url)
    try:
        print(f"ris-jobs: job store schema at revision {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Upgrade the schema (idempotent), then one uvicorn process serving `server.main:create_app`."""
    import uvicorn

    create_schema(get_settings())
    # no per-request access log: at ~1,000 status requests/s it costs more than the request itself
    uvicorn.run("server.main:create_app", factory=True, host=args.host, port=args.port, log_level="info",
                access_log=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """One Celery worker per visible GPU or group of --gpus-per-worker GPUs (CUDA_VISIBLE_DEVICES=ids), or one
    CPU worker."""
    settings = get_settings()
    sup = Supervisor()
    sup.install_signal_handlers()
    gpus = [] if args.cpu else visible_gpus()
    queues: tuple[DeviceQueue, ...] = args.queues or default_queues(gpus)
    # without a GPU, the CPU worker also serves the gpu queue if told to (jobs that do not require CUDA run on it)
    cpu_queues = [q for q in queues if q == "cpu" or not gpus]
    if cpu_queues:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a CPU worker must not grab a GPU by accident
        sup.start("worker-cpu", worker_command(settings, name="cpu", queues=cpu_queues, loglevel=args.loglevel),
                  env=env)
    for group in gpu_groups(gpus, args.gpus_per_worker) if "gpu" in queues else []:
        name = "gpu" + "-".join(group)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(group))
        sup.start(f"worker-{name}", worker_command(settings, name=name, queues=["gpu"], loglevel=args.loglevel),
                  env=env)
    if args.sweeps:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        sup.start("worker-sweeps", sweep_worker_command(settings, concurrency=args.sweeps, loglevel=args.loglevel),
                  env=env)
    return sup.wait()


def cmd_reaper(args: argparse.Namespace) -> int:
    """The reaper loop until SIGTERM / Ctrl-C."""
    from worker.reaper import run_reaper

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_reaper(get_settings(), stop=stop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ris-jobs", description=__doc__.split("\n\n", 1)[0],
                                     epilog="`ris-jobs COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help_text in (
        ("serve", cmd_serve, "run everything on this machine: Redis if needed, API, one worker, reaper"),
        ("api", cmd_api, "run the HTTP API (one uvicorn process)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.set_defaults(func=func)
    p = sub.add_parser("worker", help="one Celery worker per visible GPU, or one CPU worker")
    p.add_argument("--cpu", action="store_true", help="one CPU worker even if GPUs are visible")
    p.add_argument("--sweeps", type=int, default=2, metavar="N",
                   help="also run the drivers of up to N sweeps at once on the CPU (0 = none; default 2)")
    p.add_argument("--queues", type=parse_queues, default=None, metavar="gpu,cpu",
                   help="device queues this host serves: gpu (one Celery worker per GPU group), cpu (one CPU "
                   "worker), or both. Default: gpu on a host with GPUs, gpu,cpu on a host without")
    p.add_argument("--gpus-per-worker", type=int, default=1, metavar="N",
                   help="GPUs each Celery worker owns; a job may ask for up to N (resources.gpus). Default 1")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("reaper", help="requeue or fail jobs whose worker died; re-dispatch lost messages")
    p.set_defaults(func=cmd_reaper)
    p = sub.add_parser("migrate", help="upgrade the job store's schema to the newest revision, then exit")
    p.set_defaults(func=cmd_migrate)
    user_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in user_cli.COMMANDS:
        return user_cli.run(args)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
