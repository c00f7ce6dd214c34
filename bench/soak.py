"""Soak: the whole service under sustained faults for `--minutes` (default 30), then a loss audit.

What runs: a private PostgreSQL (the job store), a private Redis, the real API (uvicorn), the real reaper and two
real prefork Celery workers, all started through the fault tests' helpers (tests/fault/conftest.py), with their
shrunk timings (lease 2.5 s, reaper every 0.5 s). A submitter keeps a few jobs in flight, mixing diagnostic,
two-phase training and evaluation jobs (of a finished training job's final checkpoint) with tiny configs.

Faults during the run, spread over it: SIGKILLs of a worker at random moments (100 per 30 minutes, at least 10),
each replaced by a fresh worker; 3 Redis restarts without persistence; 3 API restarts (SIGKILL, start again);
and one schemathesis run (examples, fuzzing, stateful phases) against a second API process under a key of its
own whose jobs are cancelled afterwards.

Afterwards (faults stopped, jobs drained): jobs submitted, succeeded, failed by reason, lost (acknowledged by the
API but not in the store) and stuck (not terminal after the drain); metric points acknowledged (seen committed in
the store while the job ran) vs still stored unchanged; checkpoint records vs files (records without a file,
orphaned files before and after the reaper's orphan sweep); the longest recovery after each kind of fault; every
5xx answer (503s inside a Redis or API fault window are by design and counted apart). Target: 0 lost, 0 stuck,
0 unexpected 5xx, 0 points or checkpoints lost, 0 orphans after the sweep.

    .venv/bin/python bench/soak.py [--minutes 30] [--out var/bench-soak.json] [--seed 0]

Prints the JSON result and writes it to --out. Needs redis-server and the PostgreSQL server binaries
(/usr/lib/postgresql/*/bin); as root the database runs as the postgres user.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_schemas import JobState  # noqa: E402
from server.store.models import CheckpointRow, JobRow, MetricRow  # noqa: E402
from tests.fault.conftest import Api, RedisServer, Service, build_service, free_port  # noqa: E402
from tests.fault.postgres_server import PostgresServer  # noqa: E402
from tests.worker.configs import quick_diagnostic_config, two_phase_training_config  # noqa: E402

KEY = "soak-" + uuid.uuid4().hex
FUZZ_KEY = "soak-fuzz-" + uuid.uuid4().hex
ADMIN_KEY = "soak-admin-" + uuid.uuid4().hex
TERMINAL = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value}
TINY_EVALUATION = {"n_scenes": 16, "somp_grid": {"n_azimuth": 6, "n_elevation": 3, "n_range": 2},
                   "baselines": [], "crb": False}
#: Jobs the submitter keeps in flight (two workers: one running and one queued each).
IN_FLIGHT = 4
#: Seconds the drain waits for every job to finish once the faults stop.
DRAIN_S = 300.0
KILLS_PER_30_MIN = 100


@dataclass
class Tally:
    """What the clients saw; shared by the threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    fault_windows: list[tuple[float, float, str]] = field(default_factory=list)
    recoveries: dict[str, list[float]] = field(default_factory=dict)
    #: job id -> seq -> (phase, step, key, value) seen committed, and checkpoint name -> sha256 seen committed
    acked_points: dict[str, dict[int, tuple[Any, ...]]] = field(default_factory=dict)
    acked_checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def in_fault_window(self, at: float) -> bool:
        return any(start <= at <= end + 5.0 for start, end, _ in self.fault_windows)

    def recovered(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.recoveries.setdefault(kind, []).append(round(seconds, 2))


class Soak:
    def __init__(self, minutes: float, seed: int, directory: Path) -> None:
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.dir = directory
        self.tally = Tally()
        self.stop = threading.Event()
        self.pg = PostgresServer()
        self.pg.start()
        self.redis = RedisServer(directory)
        self.redis.start()
        self.svc, self.engine = build_service(
            directory, self.redis, DATABASE_URL=self.pg.url, API_KEYS=f"{KEY},{FUZZ_KEY}", ADMIN_API_KEYS=ADMIN_KEY,
            RATE_LIMIT_PER_S="0", ORPHAN_GRACE_S="20", MAX_QUEUED_JOBS_PER_KEY="50", CANCEL_GRACE_S="5",
            # a lease that a CPU-starved heartbeat thread (torch importing in the same process) does not lose
            LEASE_TIMEOUT_S="10", HEARTBEAT_INTERVAL_S="1",
        )
        self.port = free_port()
        self.api: Api = self.svc.start_api(self.port)
        self.svc.start_reaper()
        self.worker_names = [f"w{i}" for i in range(2)]
        self.workers = [self.svc.start_worker(name) for name in self.worker_names]
        self.spawned = 2

    # -- HTTP with accounting --

    def request(self, method: str, path: str, *, key: str = KEY, **kwargs: Any) -> httpx.Response | None:
        headers = {"X-API-Key": key, **kwargs.pop("headers", {})}
        try:
            response = httpx.request(method, f"{self.api.base_url}{path}", headers=headers, timeout=15.0, **kwargs)
        except httpx.HTTPError:
            return None
        if response.status_code >= 500:
            at = time.monotonic()
            with self.tally.lock:
                self.tally.server_errors.append({"at": at, "method": method, "path": path,
                                                 "status": response.status_code, "body": response.text[:300]})
        return response

    # -- the submitter --

    def _job_body(self) -> dict[str, Any]:
        roll = self.rng.random()
        finished_training = [j for j in self._finished_training()]
        if roll < 0.2 and finished_training:
            source = {"job_id": self.rng.choice(finished_training), "checkpoint": "final"}
            return {"kind": "evaluation", "config": {**TINY_EVALUATION, "checkpoint": source}}
        if roll < 0.6:
            return {"kind": "training", "config": two_phase_training_config(), "max_attempts": 5}
        return {"kind": "diagnostic", "config": quick_diagnostic_config(), "max_attempts": 5}

    def _finished_training(self) -> list[str]:
        with self.svc.sessions() as s:
            ids = set(self.tally.submitted)
            rows = s.query(JobRow.id).filter(JobRow.kind == "training", JobRow.state == "SUCCEEDED").all()
            return [r.id for r in rows if r.id in ids]

    def submit_one(self) -> None:
        body = self._job_body()
        idempotency_key = uuid.uuid4().hex
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and not self.stop.is_set():
            response = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": idempotency_key})
            if response is not None and response.status_code == 202:
                job_id = response.json()["id"]
            elif response is not None and response.status_code == 503 and "job_id" in response.text:
                job_id = response.json()["job_id"]  # committed; the dispatch sweep sends it when Redis is back
            elif response is not None and response.status_code == 422 and body["kind"] == "evaluation":
                body = {"kind": "diagnostic", "config": quick_diagnostic_config(), "max_attempts": 5}
                continue
            else:
                time.sleep(0.5)
                continue
            with self.tally.lock:
                if job_id not in self.tally.submitted:
                    self.tally.submitted.append(job_id)
                    self.tally.kinds[body["kind"]] += 1
            return

    def submitter(self) -> None:
        while not self.stop.is_set():
            try:
                with self.svc.sessions() as s:
                    ids = list(self.tally.submitted)
                    open_jobs = s.query(JobRow.id).filter(JobRow.id.in_(ids), JobRow.state.notin_(TERMINAL)).count() \
                        if ids else 0
            except Exception as exc:  # the bench's own view of the store; keep going
                self.tally.notes.append(f"submitter read failed: {exc!r}"[:200])
                open_jobs = IN_FLIGHT
            if open_jobs < IN_FLIGHT:
                self.submit_one()
            else:
                time.sleep(0.5)

    # -- the acknowledgement sampler --

    def sampler(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(2.0)

    def sample(self) -> None:
        with self.tally.lock:
            ids = list(self.tally.submitted)
        if not ids:
            return
        with self.svc.sessions() as s:
            for row in s.query(MetricRow).filter(MetricRow.job_id.in_(ids)).all():
                seen = self.tally.acked_points.setdefault(row.job_id, {})
                seen.setdefault(row.seq, (row.phase, row.step, row.key, row.value))
            for c in s.query(CheckpointRow).filter(CheckpointRow.job_id.in_(ids)).all():
                self.tally.acked_checkpoints.setdefault(c.job_id, {})[c.name] = c.sha256

    # -- faults --

    def kill_worker(self) -> None:
        index = self.rng.randrange(len(self.workers))
        victim, name = self.workers[index], self.worker_names[index]
        with self.svc.sessions() as s:  # the Celery node is named f"{name}-<hex>@<host>"
            running = [r.id for r in s.query(JobRow.id).filter(JobRow.state.in_(("RUNNING", "CANCELLING")),
                                                               JobRow.worker.like(f"{name}-%")).all()]
        started = time.monotonic()
        Service.kill(victim)
        self.spawned += 1
        self.worker_names[index] = f"w{self.spawned}"
        self.workers[index] = self.svc.start_worker(self.worker_names[index])
        with self.tally.lock:
            self.tally.fault_windows.append((started, started, "worker kill"))
        threading.Thread(target=self._await_requeue, args=(running, started), daemon=True).start()

    def _await_requeue(self, running: list[str], started: float) -> None:
        """The job the killed worker ran is RUNNING again under a new attempt, or finished: recovered."""
        if not running:
            return
        with self.svc.sessions() as s:
            attempts = {r.id: r.attempt for r in s.query(JobRow.id, JobRow.attempt).filter(JobRow.id.in_(running))}
        deadline = started + 300.0
        while time.monotonic() < deadline:
            with self.svc.sessions() as s:
                rows = s.query(JobRow.id, JobRow.state, JobRow.attempt).filter(JobRow.id.in_(running)).all()
            waiting = [r for r in rows if r.state not in TERMINAL
                       and (r.attempt == attempts[r.id] or r.state == "QUEUED")]
            if not waiting:
                self.tally.recovered("worker kill", time.monotonic() - started)
                return
            time.sleep(0.25)
        self.tally.notes.append(f"jobs {running} did not recover within 300 s of a worker kill")

    def restart_redis(self) -> None:
        started = time.monotonic()
        self.redis.shutdown_nosave()
        time.sleep(1.0)
        self.redis.start()
        self._await_ready(started, "redis restart")

    def restart_api(self) -> None:
        started = time.monotonic()
        Service.kill(self.api.proc)
        self.api = self.svc.start_api(self.port)  # returns once /healthz answers
        self._await_ready(started, "api restart")

    def _await_ready(self, started: float, kind: str) -> None:
        deadline = started + 120.0
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api.base_url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ended = time.monotonic()
        with self.tally.lock:
            self.tally.fault_windows.append((started, ended, kind))
        self.tally.recovered(kind, ended - started)

    # -- schemathesis --

    def fuzz(self, budget_s: float) -> dict[str, Any]:
        """One schemathesis run (examples, fuzzing, stateful) against a second API process on the same store, under
        a key of its own; its jobs are cancelled afterwards by the admin key."""
        port = free_port()
        env = {**self.svc.env, "ALLOW_FAULT_INJECTION": "false", "MAX_QUEUED_JOBS_PER_KEY": "3"}
        log = (self.dir / "logs" / "fuzz-api.log").open("ab")
        api = subprocess.Popen([sys.executable, "-m", "worker.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            st = Path(sys.executable).with_name("st")
            cmd = [str(st), "run", f"{base}/openapi.json", "-H", f"X-API-Key: {FUZZ_KEY}",
                   "--phases", "examples,fuzzing,stateful", "--max-examples", "5", "--checks", "not_a_server_error",
                   "--exclude-path", "/v1/jobs/{job_id}/metrics/stream", "--no-color"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s, cwd=self.dir)
                out, code = done.stdout + done.stderr, done.returncode
            except subprocess.TimeoutExpired as exc:
                raw = exc.stdout or b""
                out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                code = None
            (self.dir / "logs" / "schemathesis.txt").write_text(out)
        finally:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=10)
        cancelled = self._cancel_fuzz_jobs()
        summary = [line for line in out.splitlines() if "passed" in line or "failed" in line or "error" in line.lower()]
        return {"exit_code": code, "timed_out": code is None, "summary": summary[-5:], "fuzz_jobs_cancelled": cancelled,
                "server_errors_found": "not_a_server_error" in out and "FAILURES" in out}

    def _cancel_fuzz_jobs(self) -> int:
        with self.svc.sessions() as s:
            ids = [r.id for r in s.query(JobRow.id).filter(JobRow.principal.isnot(None),
                                                           JobRow.state.notin_(TERMINAL)).all()
                   if r.id not in set(self.tally.submitted)]
        for job_id in ids:
            self.request("POST", f"/v1/jobs/{job_id}/cancel", key=ADMIN_KEY)
        return len(ids)

    # -- the run --

    def run(self) -> dict[str, Any]:
        duration_s = self.minutes * 60.0
        n_kills = max(10, round(KILLS_PER_30_MIN * self.minutes / 30.0))
        schedule: list[tuple[float, str]] = [(duration_s * (i + self.rng.random()) / n_kills, "kill")
                                             for i in range(n_kills)]
        schedule += [(duration_s * f, "redis") for f in (0.2, 0.5, 0.8)]
        schedule += [(duration_s * f, "api") for f in (0.35, 0.65, 0.9)]
        schedule.sort()
        threads = [threading.Thread(target=self.submitter, daemon=True),
                   threading.Thread(target=self.sampler, daemon=True)]
        for t in threads:
            t.start()
        fuzz_result: dict[str, Any] = {}
        fuzz = threading.Thread(target=lambda: fuzz_result.update(self.fuzz(max(90.0, min(240.0, duration_s * 0.15)))),
                                daemon=True)
        begin = time.monotonic()
        fuzz_started = False
        counts: Counter[str] = Counter()
        for at, what in schedule:
            while time.monotonic() - begin < at:
                if not fuzz_started and time.monotonic() - begin > duration_s * 0.05:
                    fuzz.start()
                    fuzz_started = True
                time.sleep(0.1)
            try:
                {"kill": self.kill_worker, "redis": self.restart_redis, "api": self.restart_api}[what]()
                counts[what] += 1
            except Exception as exc:  # a fault that could not be injected is reported, the soak goes on
                self.tally.notes.append(f"{what} at {at:.0f} s failed: {exc!r}"[:300])
        while time.monotonic() - begin < duration_s:
            time.sleep(0.5)
        if fuzz_started:
            fuzz.join(timeout=300)
        self.stop.set()
        for t in threads:
            t.join(timeout=150)
        drain_started = time.monotonic()
        self._drain()
        drain_s = time.monotonic() - drain_started
        self.sample()
        return self.audit(counts, fuzz_result, duration_s=time.monotonic() - begin, drain_s=drain_s)

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            with self.svc.sessions() as s:
                if not s.query(JobRow.id).filter(JobRow.id.in_(self.tally.submitted),
                                                 JobRow.state.notin_(TERMINAL)).count():
                    return
            self.sample()
            time.sleep(1.0)

    def _files(self) -> tuple[int, int, int]:
        """(checkpoint records, records whose object is missing or differs in size, unrecorded checkpoint
        objects)."""
        artifacts = self.svc.artifacts
        with self.svc.sessions() as s:
            rows = s.query(CheckpointRow.job_id, CheckpointRow.path, CheckpointRow.size).all()
        recorded = {(r.job_id, r.path) for r in rows}
        missing = 0
        for r in rows:
            info = artifacts.stat(r.job_id, r.path)
            if info is None or info.size != r.size:
                missing += 1
        unrecorded = 0
        for obj in artifacts.objects.list("jobs"):
            parts = obj.key.split("/", 2)
            if len(parts) == 3 and parts[2].startswith("checkpoints/") and (parts[1], parts[2]) not in recorded:
                unrecorded += 1
        return len(rows), missing, unrecorded

    def audit(self, counts: Counter[str], fuzz: dict[str, Any], *, duration_s: float, drain_s: float
              ) -> dict[str, Any]:
        ids = list(self.tally.submitted)
        with self.svc.sessions() as s:
            rows = {r.id: r for r in s.query(JobRow).filter(JobRow.id.in_(ids)).all()}
            stored = {(m.job_id, m.seq): (m.phase, m.step, m.key, m.value)
                      for m in s.query(MetricRow).filter(MetricRow.job_id.in_(ids)).all()}
            ckpts = {(c.job_id, c.name) for c in s.query(CheckpointRow).filter(CheckpointRow.job_id.in_(ids)).all()}
        states = Counter(r.state for r in rows.values())
        failed = Counter(r.failure_reason for r in rows.values() if r.state == "FAILED")
        acked = [(j, seq, p) for j, pts in self.tally.acked_points.items() for seq, p in pts.items()]
        points_lost = [(j, seq) for j, seq, p in acked if stored.get((j, seq)) != p and not _both_nan(stored.get(
            (j, seq)), p)]
        ckpt_acked = [(j, n) for j, names in self.tally.acked_checkpoints.items() for n in names]
        ckpts_lost = [k for k in ckpt_acked if k not in ckpts]
        records, missing, orphans_before = self._files()
        sweep_deadline = time.monotonic() + 60
        orphans_after = orphans_before
        while orphans_after and time.monotonic() < sweep_deadline:
            time.sleep(2.0)
            _, _, orphans_after = self._files()
        fault_5xx = [e for e in self.tally.server_errors if self.tally.in_fault_window(e["at"])]
        other_5xx = [e for e in self.tally.server_errors if not self.tally.in_fault_window(e["at"])]
        return {
            "minutes": self.minutes, "wall_s": round(duration_s, 1), "drain_s": round(drain_s, 1),
            "faults": {"worker_sigkills": counts["kill"], "redis_restarts": counts["redis"],
                       "api_restarts": counts["api"]},
            "jobs": {
                "submitted": len(ids), "by_kind": dict(self.tally.kinds), "succeeded": states["SUCCEEDED"],
                "failed": sum(failed.values()), "failed_by_reason": dict(failed), "cancelled": states["CANCELLED"],
                "lost": len([j for j in ids if j not in rows]),
                "stuck": len([r for r in rows.values() if r.state not in TERMINAL]),
                "attempts_max": max((r.attempt for r in rows.values()), default=0),
            },
            "metric_points": {"acknowledged": len(acked), "stored_unchanged": len(acked) - len(points_lost),
                              "lost": len(points_lost), "stored_total": len(stored)},
            "checkpoints": {"records": records, "acknowledged_records_lost": len(ckpts_lost),
                            "records_without_file": missing, "orphan_files_before_sweep": orphans_before,
                            "orphan_files_after_sweep": orphans_after},
            "longest_recovery_s": {k: max(v) for k, v in self.tally.recoveries.items()},
            "recoveries": {k: len(v) for k, v in self.tally.recoveries.items()},
            "http_5xx": {"outside_fault_windows": len(other_5xx), "inside_fault_windows": len(fault_5xx),
                         "examples": other_5xx[:5]},
            "schemathesis": fuzz,
            "notes": self.tally.notes[:20],
        }

    def close(self) -> None:
        self.stop.set()
        self.svc.stop_all()
        self.engine.dispose()
        self.redis.stop()
        self.pg.destroy()


def _both_nan(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a[:3] == b[:3] and a[3] is None and b[3] is None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench-soak.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, database files)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="ris-soak-"))
    soak = Soak(args.minutes, args.seed, directory)
    try:
        result = soak.run()
    finally:
        soak.close()
    result["run_dir"] = str(directory) if args.keep else None
    if not args.keep:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    ok = (result["jobs"]["lost"], result["jobs"]["stuck"], result["http_5xx"]["outside_fault_windows"],
          result["metric_points"]["lost"], result["checkpoints"]["acknowledged_records_lost"]) == (0, 0, 0, 0, 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
