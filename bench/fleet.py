"""Fleet benchmark: jobs per minute and queue latency with 1 and 2 CPU workers on tiny jobs, and the artifact
store's cost per checkpoint (a directory vs S3 on a local moto server). Not a test.

    .venv/bin/python bench/fleet.py [--out var/bench-fleet.json] [--jobs 6] [--workers 1 2] [--sizes-mib 1 16]

Throughput: for each worker count, a fresh world in a temp directory (SQLite store, a queue of its own on the
Redis at REDIS_URL, real prefork Celery workers with a scratch directory each, as `ris-jobs worker --queues cpu`
starts them); --jobs tiny diagnostics (resources.device = cpu) are submitted at once. jobs/min = jobs / (last
finish − first submit); queue latency = started_at − created_at of each job (median, max).

Checkpoint overhead: per size, the time of `ArtifactStore.put_checkpoint` (upload under a temporary key, commit,
sha256 check) and of `fetch` (download with sha256 check), median of --repeats, on a directory store and on S3
(moto server in this process); `local_copy_ms` (shutil.copyfile) is the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_schemas import CheckpointInfo, JobKind, JobState, Resources, stored_config  # noqa: E402
from server.dispatch import dispatch_job, job_queue_name, make_producer  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.store import ArtifactStore, create_job, create_schema, get_job, make_engine, make_session_factory  # noqa: E402,E501
from server.store.principals import ADMIN, ANONYMOUS  # noqa: E402
from tests.s3 import MotoS3, free_port  # noqa: E402
from tests.worker.configs import quick_diagnostic_config  # noqa: E402

TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def run_throughput(n_workers: int, n_jobs: int, redis_url: str, timeout_s: float) -> dict[str, Any]:
    """Submit `n_jobs` tiny CPU jobs to `n_workers` fresh workers; jobs/min and queue latency."""
    root = Path(tempfile.mkdtemp(prefix="ris-fleet-"))
    queue = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    values = {"DATABASE_URL": f"sqlite:///{root / 'jobs.sqlite'}", "REDIS_URL": redis_url,
              "ARTIFACT_DIR": str(root / "artifacts"), "JOB_QUEUE": queue, "API_KEYS": ""}
    settings = Settings(**{k.lower(): v for k, v in values.items()})  # type: ignore[arg-type]
    engine = make_engine(settings.database_url)
    create_schema(engine)
    sessions = make_session_factory(engine)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n_workers):
            env = {**os.environ, **values, "SCRATCH_DIR": str(root / f"scratch-{i}"), "CUDA_VISIBLE_DEVICES": "",
                   "PYTHONPATH": str(ROOT)}
            cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-c", "1", "-P", "prefork",
                   "--max-tasks-per-child=1", "-n", f"bench{i}-{uuid.uuid4().hex[:6]}@%h",
                   "-Q", job_queue_name(queue, "cpu"), "--loglevel", "WARNING", "--without-gossip",
                   "--without-mingle"]
            log = (root / f"worker-{i}.log").open("ab")
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        time.sleep(3.0)  # let the workers connect; they fork a fresh child per job anyway
        config = stored_config(quick_diagnostic_config(), Resources(device="cpu"))
        producer = make_producer(settings)
        started = time.monotonic()
        ids = []
        with sessions() as s:
            for _ in range(n_jobs):
                job = create_job(s, kind=JobKind.DIAGNOSTIC, name="bench", config=config, max_attempts=1,
                                 principal=ANONYMOUS)
                dispatch_job(s, producer, job.id, queue)
                ids.append(job.id)
        deadline = started + timeout_s
        while True:
            with sessions() as s:
                rows = [get_job(s, job_id, principal=ADMIN) for job_id in ids]
            if all(JobState(r.state) in TERMINAL for r in rows):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not finished within {timeout_s} s (logs in {root})")
            time.sleep(0.2)
        elapsed_s = time.monotonic() - started
        latencies = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at is not None]
        return {
            "workers": n_workers, "jobs": n_jobs, "succeeded": sum(r.state == JobState.SUCCEEDED for r in rows),
            "elapsed_s": round(elapsed_s, 2), "jobs_per_min": round(60.0 * n_jobs / elapsed_s, 2),
            "queue_latency_s": {"median": round(statistics.median(latencies), 2),
                                "max": round(max(latencies), 2)},
            "run_s": {"median": round(statistics.median(
                [(r.finished_at - r.started_at).total_seconds() for r in rows if r.finished_at and r.started_at]),
                2)},
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        engine.dispose()
        shutil.rmtree(root, ignore_errors=True)


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000.0 * statistics.median(times), 1)


def run_checkpoint_overhead(sizes_mib: list[int], repeats: int) -> list[dict[str, Any]]:
    """Upload and download times of one checkpoint through each store, per size."""
    moto = MotoS3(port=free_port())
    moto.start()
    os.environ.update(moto.env())  # botocore reads the endpoint and credentials from the environment
    root = Path(tempfile.mkdtemp(prefix="ris-fleet-ckpt-"))
    try:
        stores = {"directory": ArtifactStore(root / "store"), "s3_moto": ArtifactStore(f"s3://{moto.make_bucket()}/a")}
        rows = []
        for size_mib in sizes_mib:
            data = os.urandom(size_mib * 1024 * 1024)
            src = root / f"ckpt-{size_mib}.pt"
            src.write_bytes(data)
            info = CheckpointInfo(name=f"bench-{size_mib}", phase="p", epoch=0, step=1, path=str(src),
                                  size=len(data), sha256=hashlib.sha256(data).hexdigest())
            row: dict[str, Any] = {"size_mib": size_mib, "local_copy_ms": _median_ms(
                lambda p=src: shutil.copyfile(p, root / "copy.pt"), repeats)}
            for name, store in stores.items():
                stored = store.put_checkpoint("bench-job", info)
                key = store.job_key("bench-job", stored.path)
                row[f"{name}_upload_ms"] = _median_ms(
                    lambda s=store, i=info: s.put_checkpoint("bench-job", i), repeats)
                row[f"{name}_fetch_ms"] = _median_ms(
                    lambda s=store, k=key, i=info: s.fetch(k, root / "fetched.pt", sha256=i.sha256), repeats)
            rows.append(row)
        return rows
    finally:
        moto.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench-fleet.json")
    parser.add_argument("--jobs", type=int, default=6, help="tiny jobs per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "command": " ".join(sys.argv),
        "throughput": [run_throughput(n, args.jobs, args.redis_url, args.timeout_s) for n in args.workers],
        "checkpoint_overhead": run_checkpoint_overhead(args.sizes_mib, args.repeats),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
