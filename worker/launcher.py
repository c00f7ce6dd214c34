"""Starting and ending the processes of a multi-process training job (docs/ARCHITECTURE.md "Multi-GPU training").

Owns: RankSpec, RankLost, RankGroup and `rank_group`. The calling process is rank 0: it keeps the job's
sink, monitor and lease, and trains like the others; ranks 1..W-1 are `python -m worker.rank` children
that read their RankSpec from stdin, join the process group through rank 0's TCPStore and train with a
sink that drops everything (rank 0 reports totals over all ranks).

No training process outlives the job:
- every rank runs in its own session (a Ctrl-C or SIGTERM aimed at the worker reaches rank 0 only, which
  ends the others) and asks the kernel to SIGKILL it when its parent dies (PR_SET_PDEATHSIG), so a rank 0
  killed by the hard time limit or a lost worker takes the others with it;
- on leaving `rank_group`, however it is left (success, exception, soft time limit), rank 0 waits a short
  grace for ranks that finish by themselves, then SIGKILLs each remaining rank's process group and reaps it.

A rank that dies while the job runs makes rank 0's next collective fail (gloo at once; NCCL through the
abort below); `rank_group` then raises RankLost naming it, and the task requeues the job (or fails it
WORKER_LOST when its attempts are spent).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from ris_model.train.distributed import SINGLE, DistContext, all_ready, init_process_group, tcp_store

log = logging.getLogger(__name__)

#: Seconds rank 0 waits, after a normal end, for the other ranks to exit by themselves before killing them.
FINISH_GRACE_S = 30.0
#: Seconds rank 0 waits, after an error, for a dying rank to be noticed (so the error names it).
ERROR_GRACE_S = 2.0
#: Seconds between the watchdog's looks at the ranks.
WATCH_INTERVAL_S = 0.2
#: Seconds a blocked NCCL collective gets, after a rank died, before the watchdog aborts the group.
NCCL_ABORT_AFTER_S = 10.0


class RankSpec(BaseModel):
    """What one rank runs: the job's stored config and where its files are (sent as JSON on the rank's stdin)."""

    model_config = ConfigDict(extra="forbid")

    label: str  # the job id: in each rank's command line, so an operator (or a test) can find its processes
    kind: str
    config: dict[str, Any]
    checkpoint_dir: str
    resume_from: str | None = None
    device: Literal["cuda", "cpu"]
    world_size: int
    rank: int = 0
    store_port: int = 0
    parent_pid: int = 0


class RankLost(Exception):
    """A training process other than rank 0 died while the job ran."""


@dataclass(frozen=True)
class RankGroup:
    """What the caller trains with: its DistContext and its device."""

    context: DistContext
    device: torch.device


def rank_device(device: Literal["cuda", "cpu"], rank: int) -> torch.device:
    """Rank r trains on GPU r of the worker's visible GPUs (CUDA), or on the CPU."""
    return torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")


def cpu_threads_per_rank(world_size: int) -> int:
    """Intra-op threads of one CPU rank: the worker's cores shared out, so the ranks do not oversubscribe them."""
    return max(1, len(os.sched_getaffinity(0)) // world_size)


def rank_command(spec: RankSpec) -> list[str]:
    return [sys.executable, "-m", "worker.rank", "--job", spec.label, "--rank", str(spec.rank)]


class _Watchdog(threading.Thread):
    """Notices the first rank that exits abnormally; on NCCL, aborts the group if rank 0 stays blocked."""

    def __init__(self, procs: dict[int, subprocess.Popen[bytes]], *, abort_nccl: bool) -> None:
        super().__init__(name="rank-watchdog", daemon=True)
        self._procs, self._abort_nccl = procs, abort_nccl
        self._stop_event = threading.Event()
        self.lost: str | None = None  # "rank r exited with ..."
        self._lost_at: float | None = None

    def run(self) -> None:
        while not self._stop_event.wait(WATCH_INTERVAL_S):
            if self.lost is None:
                for rank, proc in self._procs.items():
                    code = proc.poll()
                    if code is not None and code != 0:
                        self.lost = f"rank {rank} of {len(self._procs) + 1} {_exit_text(code)}"
                        self._lost_at = time.monotonic()
                        log.error("%s; ending the job's other processes", self.lost)
                        break
            elif self._abort_nccl and self._lost_at is not None and \
                    time.monotonic() - self._lost_at > NCCL_ABORT_AFTER_S:
                self._lost_at = None  # once
                with contextlib.suppress(Exception):
                    dist.distributed_c10d._abort_process_group()  # unblocks a collective waiting for the dead rank

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5.0)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _spawn(spec: RankSpec) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if spec.device == "cpu":
        env["OMP_NUM_THREADS"] = str(cpu_threads_per_rank(spec.world_size))
    proc = subprocess.Popen(rank_command(spec), stdin=subprocess.PIPE, env=env, start_new_session=True)
    assert proc.stdin is not None  # stdin=PIPE
    proc.stdin.write(spec.model_dump_json().encode())
    proc.stdin.close()
    return proc


def _end(procs: dict[int, subprocess.Popen[bytes]], *, grace_s: float) -> None:
    """Wait up to `grace_s` for the ranks to exit, then SIGKILL each one's process group and reap it."""
    deadline = time.monotonic() + grace_s
    for rank, proc in procs.items():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            log.warning("rank %d (pid %d) still runs; killing it", rank, proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session's group: the rank and anything it started
        proc.wait()


@contextlib.contextmanager
def rank_group(spec: RankSpec) -> Iterator[RankGroup]:
    """Run the block as rank 0 of `spec.world_size` processes (started here, ended on the way out).

    With world_size 1 nothing is started and the block runs alone (DistContext SINGLE).

    Raises:
        RankLost: another rank died while the block ran (raised from the block's own exception).
    """
    device = rank_device(spec.device, 0)
    if spec.world_size == 1:
        yield RankGroup(SINGLE, device)
        return
    threads = torch.get_num_threads()
    if spec.device == "cpu":
        torch.set_num_threads(cpu_threads_per_rank(spec.world_size))
    store, port = tcp_store(0, spec.world_size, is_master=True)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    watchdog = _Watchdog(procs, abort_nccl=spec.device == "cuda")
    ok = False
    try:
        for rank in range(1, spec.world_size):
            procs[rank] = _spawn(spec.model_copy(update={"rank": rank, "store_port": port,
                                                        "parent_pid": os.getpid()}))
        log.info("started ranks 1..%d of job %s (pids %s)", spec.world_size - 1, spec.label,
                 ", ".join(str(p.pid) for p in procs.values()))
        watchdog.start()
        # join only once every rank runs: a rank that dies while starting would leave the join waiting
        while not all_ready(store, spec.world_size):
            if watchdog.lost is not None:
                raise RuntimeError("a training process died before it joined the group")
            time.sleep(WATCH_INTERVAL_S)
        init_process_group(store, rank=0, world_size=spec.world_size, device=device)
        yield RankGroup(DistContext(rank=0, world_size=spec.world_size), device)
        ok = True
    except BaseException as exc:
        end = time.monotonic() + ERROR_GRACE_S
        while watchdog.lost is None and watchdog.is_alive() and time.monotonic() < end:
            time.sleep(WATCH_INTERVAL_S)
        if watchdog.lost is not None:
            raise RankLost(f"{watchdog.lost} while the job ran") from exc
        raise
    finally:
        if watchdog.is_alive():
            watchdog.stop()
        _end(procs, grace_s=FINISH_GRACE_S if ok else 0.0)
        _leave_group(clean=ok)
        torch.set_num_threads(threads)


def _leave_group(*, clean: bool) -> None:
    """Destroy the process group; after an error, abort it (its peers are gone: a clean destroy could wait)."""
    if not dist.is_initialized():
        return
    if not clean:
        with contextlib.suppress(Exception):
            dist.distributed_c10d._abort_process_group()
    if dist.is_initialized():
        dist.destroy_process_group()
