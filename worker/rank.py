"""A training process of rank >= 1 of a multi-process job: `python -m worker.rank --job <id> --rank <r>`,
started by worker/launcher.py with its RankSpec as JSON on stdin (docs/ARCHITECTURE.md "Multi-GPU training").

It dies with its parent (PR_SET_PDEATHSIG, and a thread that watches the parent pid where prctl is missing),
joins rank 0's process group, trains with a sink that drops everything (rank 0 reports for all ranks) and
exits 0, or 1 with the traceback on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from worker.launcher import RankSpec, rank_device

#: Linux prctl option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: Seconds between the orphan watch's looks at the parent pid.
_ORPHAN_POLL_S = 1.0

log = logging.getLogger("worker.rank")


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when `parent_pid` dies (or has already died: the race before prctl is closed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_ORPHAN_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.rank", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--job", required=True, help="the job id (for ps; the spec comes on stdin)")
    parser.add_argument("--rank", type=int, required=True)
    parser.parse_args(argv)
    spec = RankSpec.model_validate_json(sys.stdin.buffer.read())
    die_with_parent(spec.parent_pid)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank {spec.rank}: %(message)s")
    run_rank(spec)
    return 0


def run_rank(spec: RankSpec) -> None:
    """Join the group and train this rank's share of the job."""
    import torch.distributed as dist

    from ris_model.train.distributed import DistContext, init_process_group, say_ready, tcp_store
    from ris_model.train.jobs import run_training_job
    from ris_model.train.sinks import NullSink
    from worker.tasks import build_config, training_hooks

    device = rank_device(spec.device, spec.rank)
    store, _ = tcp_store(spec.store_port, spec.world_size, is_master=False)
    say_ready(store, spec.rank)
    init_process_group(store, rank=spec.rank, world_size=spec.world_size, device=device)
    config = build_config(spec.kind, spec.config)
    try:
        run_training_job(config, sink=NullSink(), device=str(device), hooks=training_hooks(config, spec.config),
                         checkpoint_dir=Path(spec.checkpoint_dir),
                         resume_from=Path(spec.resume_from) if spec.resume_from else None,
                         dist=DistContext(rank=spec.rank, world_size=spec.world_size))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
