"""API benchmark: latency of GET /v1/jobs/{id} and POST /v1/jobs, status requests/s of one uvicorn process, and
POST → RUNNING time with a warm worker. Not a test.

    .venv/bin/python bench/api.py [--out var/bench-api.json] [--duration-s 10] [--threads 8]

It starts its own stack in a temp directory (SQLite, a private redis-server, one `ris-jobs api` process, one CPU
`ris-jobs worker`), so nothing else on the machine is touched. The load generator runs in a separate process
(threads with one httpx client each), so it does not steal the API process's CPU inside one interpreter.
Order: POST latency first (no worker yet; those jobs are then cancelled), then GET load, then the worker and
the POST → RUNNING timings (median over --n-jobs tiny diagnostics, one at a time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.worker.configs import quick_diagnostic_config  # noqa: E402  (after the path fix-up)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {deadline_s} s")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(latencies_s: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies_s),
        "median_ms": 1000 * statistics.median(latencies_s),
        "p99_ms": 1000 * percentile(latencies_s, 99),
    }


# -- the stack --


@contextmanager
def stack(work: Path) -> Iterator[tuple[str, str, Callable[[], subprocess.Popen[bytes]]]]:
    """Redis + one API process; yields (base URL, Redis URL, start_worker). Everything is stopped on exit."""
    redis_port, api_port = free_port(), free_port()
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite'}", "ARTIFACT_DIR": str(work / "artifacts"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "JOB_QUEUE": "bench", "API_KEYS": "",
        "MAX_QUEUED_JOBS_PER_KEY": "1000000",
    }
    logs = (work / "stack.log").open("ab")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server / brew install redis)")
    spawn([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    spawn([sys.executable, "-m", "worker.cli", "api", "--host", "127.0.0.1", "--port", str(api_port)])
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_until("API", lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200)
        worker_cmd = [sys.executable, "-m", "worker.cli", "worker", "--cpu", "--loglevel", "WARNING"]
        yield base, env["REDIS_URL"], lambda: spawn(worker_cmd)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


# -- load generator (runs in its own process) --


def _load_worker(url: str, stop_at: float, out: list[float]) -> None:
    with httpx.Client(timeout=10.0) as client:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            response = client.get(url)
            out.append(time.perf_counter() - t0)
            response.raise_for_status()


def _load_process(url: str, threads: int, duration_s: float, results: mp.Queue) -> None:  # type: ignore[type-arg]
    stop_at = time.perf_counter() + duration_s
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    pool = [threading.Thread(target=_load_worker, args=(url, stop_at, per_thread[i])) for i in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    results.put({"latencies": [x for lst in per_thread for x in lst], "elapsed_s": elapsed})


def bench_status_load_wrk(url: str, *, connections: int, duration_s: float) -> dict[str, Any]:
    """GET `url` with wrk (one C thread, `connections` keep-alive connections): a load generator light enough
    that on a 2-core machine the API process, not the client, is what is measured."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(duration_s)}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    latency = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            latency[parts[0]] = _ms(parts[1])
    rps = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec:"))
    return {"load_generator": "wrk", "connections": connections, "median_ms": latency.get("50%"),
            "p99_ms": latency.get("99%"), "requests_per_s": rps}


def _ms(value: str) -> float:
    """wrk's '1.23ms' / '450.00us' / '1.02s' in milliseconds."""
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    raise ValueError(f"unknown wrk duration {value!r}")


def bench_status_load(url: str, *, threads: int, duration_s: float) -> dict[str, Any]:
    """GET `url` from `threads` threads in a separate process for `duration_s`; latency and requests/s."""
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_load_process, args=(url, threads, duration_s, results))
    proc.start()
    data = results.get(timeout=duration_s + 120)
    proc.join()
    lat = data["latencies"]
    return {**summary_ms(lat), "threads": threads, "requests_per_s": len(lat) / data["elapsed_s"]}


# -- sequential benchmarks --


def bench_post(client: httpx.Client, body: dict[str, Any], n: int) -> tuple[dict[str, float], list[str]]:
    """POST `n` jobs one after another (no worker runs yet); returns the latency summary and the job ids."""
    latencies, ids = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.post("/v1/jobs", json=body)
        latencies.append(time.perf_counter() - t0)
        response.raise_for_status()
        ids.append(response.json()["id"])
    return summary_ms(latencies), ids


def wait_state(client: httpx.Client, job_id: str, done: Callable[[str], bool], deadline_s: float = 300) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        state = client.get(f"/v1/jobs/{job_id}").json()["state"]
        if done(state):
            return str(state)
        time.sleep(0.005)
    raise RuntimeError(f"job {job_id} did not reach the expected state within {deadline_s} s")


def bench_post_to_running(client: httpx.Client, body: dict[str, Any], n: int) -> dict[str, float]:
    """POST → first GET that shows the job past QUEUED, for `n` jobs in turn (the worker is warm and idle)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        wait_state(client, job_id, lambda s: s != "QUEUED")
        times.append(time.perf_counter() - t0)
        wait_state(client, job_id, lambda s: s in ("SUCCEEDED", "FAILED", "CANCELLED"))
    return {"n": n, "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench-api.json")
    parser.add_argument("--duration-s", type=float, default=10.0, help="GET load duration")
    parser.add_argument("--threads", type=int, default=8, help="load-generator threads")
    parser.add_argument("--n-posts", type=int, default=200)
    parser.add_argument("--n-jobs", type=int, default=10, help="jobs for the POST → RUNNING median")
    args = parser.parse_args()
    body = {"kind": "diagnostic", "name": "bench", "config": quick_diagnostic_config()}
    with tempfile.TemporaryDirectory(prefix="ris-bench-") as tmp, stack(Path(tmp)) as (base, redis_url, start_worker):
        with httpx.Client(base_url=base, timeout=30.0) as client:
            post, ids = bench_post(client, body, args.n_posts)
            for job_id in ids:  # nobody ran them: cancel, and drop their messages so the worker starts idle
                client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
            redis.Redis.from_url(redis_url).delete("bench")
            url = f"{base}/v1/jobs/{ids[0]}"
            if shutil.which("wrk"):
                status = bench_status_load_wrk(url, connections=args.threads, duration_s=args.duration_s)
            else:  # Debian: apt-get install wrk
                status = bench_status_load(url, threads=args.threads, duration_s=args.duration_s)
            start_worker()
            warm_id = client.post("/v1/jobs", json=body).json()["id"]  # warm-up: the worker imports everything
            wait_state(client, warm_id, lambda s: s in ("SUCCEEDED", "FAILED", "CANCELLED"))
            to_running = bench_post_to_running(client, body, args.n_jobs)
    result = {
        "get_job": status, "post_job": post, "post_to_running": to_running,
        "api_processes": 1, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
